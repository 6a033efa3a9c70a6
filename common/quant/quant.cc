#include "common/quant/quant.h"
