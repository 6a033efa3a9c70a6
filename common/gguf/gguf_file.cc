#include "common/gguf/gguf_file.h"
