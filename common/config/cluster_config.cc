#include "common/config/cluster_config.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <charconv>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "common/base/status.h"

namespace chord {
namespace {

// yaml-cpp marks are 0-based; people count lines from 1.
int LineOf(const YAML::Node& node) { return node.Mark().line + 1; }

// absl::StrCat here takes absl::string_view, which Debian's absl does not alias to
// std::string_view; hence the std::string parameters.
absl::Status FieldError(const std::string& field, const YAML::Node& node, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("cluster config: ", field, " (line ", LineOf(node), "): ", what));
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF). YAML text is Unicode: the printer replaces other bytes, so two
// different strings could print the same (two worker ids, for one).
bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<uint8_t>(text[i]);
    size_t length = 0;
    uint8_t low = 0x80, high = 0xBF;  // range of the second byte
    if (lead < 0x80) {
      ++i;
      continue;
    } else if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      const auto byte = static_cast<uint8_t>(text[i + k]);
      if (k == 1 ? (byte < low || byte > high) : (byte < 0x80 || byte > 0xBF)) return false;
    }
    i += length;
  }
  return true;
}

absl::StatusOr<std::string> ReadString(const std::string& field, const YAML::Node& node) {
  if (!node.IsScalar()) return FieldError(field, node, "expected a string");
  if (!IsValidUtf8(node.Scalar())) return FieldError(field, node, "not valid UTF-8");
  return node.Scalar();
}

absl::StatusOr<int64_t> ReadInt(const std::string& field, const YAML::Node& node, int64_t min,
                                int64_t max) {
  if (!node.IsScalar()) return FieldError(field, node, "expected an integer");
  const std::string& text = node.Scalar();
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    return FieldError(field, node, absl::StrCat("expected an integer, got '", text, "'"));
  }
  if (value < min || value > max) {
    return FieldError(field, node, absl::StrCat(value, " is out of range [", min, ", ", max, "]"));
  }
  return value;
}

absl::Status ReadPort(const std::string& field, const YAML::Node& node, int* out) {
  ASSIGN_OR_RETURN(int64_t value, ReadInt(field, node, 0, 65535));
  *out = static_cast<int>(value);
  return absl::OkStatus();
}

absl::Status ReadCount(const std::string& field, const YAML::Node& node, int min, int* out) {
  ASSIGN_OR_RETURN(int64_t value, ReadInt(field, node, min, std::numeric_limits<int>::max()));
  *out = static_cast<int>(value);
  return absl::OkStatus();
}

absl::Status ReadChoice(const std::string& field, const YAML::Node& node,
                        std::initializer_list<std::string_view> choices, std::string* out) {
  ASSIGN_OR_RETURN(std::string value, ReadString(field, node));
  for (std::string_view choice : choices) {
    if (value == choice) {
      *out = std::move(value);
      return absl::OkStatus();
    }
  }
  std::string allowed;
  for (std::string_view choice : choices) {
    absl::StrAppend(&allowed, allowed.empty() ? "" : ", ", std::string(choice));
  }
  return FieldError(field, node, absl::StrCat("'", value, "' is not one of: ", allowed));
}

absl::Status ReadBool(const std::string& field, const YAML::Node& node, bool* out) {
  ASSIGN_OR_RETURN(std::string value, ReadString(field, node));
  if (value == "true") {
    *out = true;
  } else if (value == "false") {
    *out = false;
  } else {
    return FieldError(field, node, absl::StrCat("expected true or false, got '", value, "'"));
  }
  return absl::OkStatus();
}

// One handler per known key; a key without a handler is an error, so typos
// surface instead of silently keeping a default.
using FieldHandler = std::function<absl::Status(const std::string& field, const YAML::Node&)>;
using FieldTable = std::vector<std::pair<std::string_view, FieldHandler>>;

FieldHandler StringField(std::string* out) {
  return [out](const std::string& f, const YAML::Node& n) -> absl::Status {
    ASSIGN_OR_RETURN(*out, ReadString(f, n));
    return absl::OkStatus();
  };
}

absl::Status ReadMap(const std::string& section, const YAML::Node& node, const FieldTable& table) {
  if (!node.IsMap()) return FieldError(section, node, "expected a mapping");
  // yaml-cpp keeps every copy of a repeated key. Read twice, a second
  // `workers:` would append its list to the first, past the duplicate-id check.
  std::set<std::string> seen;
  for (const auto& entry : node) {
    const std::string key = entry.first.Scalar();
    const std::string field = section + "." + key;
    if (!seen.insert(key).second) return FieldError(field, entry.first, "duplicate key");
    const FieldHandler* handler = nullptr;
    for (const auto& [name, fn] : table) {
      if (name == key) handler = &fn;
    }
    if (handler == nullptr) return FieldError(field, entry.first, "unknown key");
    if (entry.second.IsNull()) return FieldError(field, entry.first, "missing value");
    RETURN_IF_ERROR((*handler)(field, entry.second));
  }
  return absl::OkStatus();
}

absl::Status ReadCoordinator(const YAML::Node& node, CoordinatorSection* c) {
  const FieldTable table = {
      {"host", StringField(&c->host)},
      {"grpc_port",
       [&](const std::string& f, const YAML::Node& n) { return ReadPort(f, n, &c->grpc_port); }},
      {"control_port",
       [&](const std::string& f, const YAML::Node& n) { return ReadPort(f, n, &c->control_port); }},
      {"kv_slots",
       [&](const std::string& f, const YAML::Node& n) { return ReadCount(f, n, 1, &c->kv_slots); }},
      {"ctx_size",
       [&](const std::string& f, const YAML::Node& n) -> absl::Status {
         ASSIGN_OR_RETURN(c->ctx_size, ReadInt(f, n, 0, std::numeric_limits<int32_t>::max()));
         return absl::OkStatus();
       }},
      {"kv_tokens",
       [&](const std::string& f, const YAML::Node& n) -> absl::Status {
         ASSIGN_OR_RETURN(c->kv_tokens, ReadInt(f, n, 0, std::numeric_limits<int32_t>::max()));
         return absl::OkStatus();
       }},
      {"kv_type",
       [&](const std::string& f, const YAML::Node& n) {
         return ReadChoice(f, n, {"f32", "f16"}, &c->kv_type);
       }},
      {"exact",
       [&](const std::string& f, const YAML::Node& n) { return ReadBool(f, n, &c->exact); }},
      {"chain_steps",
       [&](const std::string& f, const YAML::Node& n) { return ReadBool(f, n, &c->chain_steps); }},
      {"max_queue", [&](const std::string& f,
                        const YAML::Node& n) { return ReadCount(f, n, 1, &c->max_queue); }},
      {"min_workers", [&](const std::string& f,
                          const YAML::Node& n) { return ReadCount(f, n, 1, &c->min_workers); }},
      {"http_port",
       [&](const std::string& f, const YAML::Node& n) { return ReadPort(f, n, &c->http_port); }},
      {"http_host", StringField(&c->http_host)},
      {"chat_template", StringField(&c->chat_template)},
      {"api_key_file", StringField(&c->api_key_file)},
      {"tls_cert", StringField(&c->tls_cert)},
      {"tls_key", StringField(&c->tls_key)},
      {"tls_client_ca", StringField(&c->tls_client_ca)},
      {"worker_timeout_ms",
       [&](const std::string& f, const YAML::Node& n) -> absl::Status {
         ASSIGN_OR_RETURN(c->worker_timeout_ms, ReadInt(f, n, 100, 3600000));
         return absl::OkStatus();
       }},
      {"grace_ms",
       [&](const std::string& f, const YAML::Node& n) -> absl::Status {
         ASSIGN_OR_RETURN(c->grace_ms, ReadInt(f, n, 0, 3600000));
         return absl::OkStatus();
       }},
      {"step_timeout_ms",
       [&](const std::string& f, const YAML::Node& n) -> absl::Status {
         ASSIGN_OR_RETURN(c->step_timeout_ms, ReadInt(f, n, 1, 3600000));
         return absl::OkStatus();
       }},
      {"curve_key", StringField(&c->curve_key)},
  };
  RETURN_IF_ERROR(ReadMap("coordinator", node, table));
  absl::Status valid = ValidateCoordinatorSection(*c);
  if (!valid.ok()) return FieldError("coordinator", node, std::string(valid.message()));
  return absl::OkStatus();
}

absl::Status ReadLoader(const YAML::Node& node, LoaderSection* l) {
  const FieldTable table = {
      {"host", StringField(&l->host)},
      {"port", [&](const std::string& f, const YAML::Node& n) { return ReadPort(f, n, &l->port); }},
      {"model", StringField(&l->model)},
      {"curve_key", StringField(&l->curve_key)},
  };
  return ReadMap("loader", node, table);
}

absl::Status ReadSize(const std::string& f, const YAML::Node& n, uint64_t* out) {
  if (!n.IsScalar()) return FieldError(f, n, "expected a size such as 2G");
  absl::StatusOr<uint64_t> size = ParseByteSize(n.Scalar());
  if (!size.ok()) return FieldError(f, n, std::string(size.status().message()));
  *out = *size;
  return absl::OkStatus();
}

absl::Status ReadWorker(const std::string& section, const YAML::Node& node, WorkerSection* w) {
  const FieldTable table = {
      {"id", StringField(&w->id)},
      {"host", StringField(&w->host)},
      {"data_port",
       [&](const std::string& f, const YAML::Node& n) { return ReadPort(f, n, &w->data_port); }},
      {"memory_budget", [&](const std::string& f,
                            const YAML::Node& n) { return ReadSize(f, n, &w->memory_budget); }},
      {"gpu_memory_budget",
       [&](const std::string& f, const YAML::Node& n) {
         return ReadSize(f, n, &w->gpu_memory_budget);
       }},
      {"backend",
       [&](const std::string& f, const YAML::Node& n) {
         return ReadChoice(f, n, {"cpu", "cuda"}, &w->backend);
       }},
      {"device",
       [&](const std::string& f, const YAML::Node& n) { return ReadCount(f, n, 0, &w->device); }},
      {"threads",
       [&](const std::string& f, const YAML::Node& n) { return ReadCount(f, n, 0, &w->threads); }},
      {"curve_key", StringField(&w->curve_key)},
      {"nccl", [&](const std::string& f, const YAML::Node& n) { return ReadBool(f, n, &w->nccl); }},
      {"nccl_interface", StringField(&w->nccl_interface)},
  };
  RETURN_IF_ERROR(ReadMap(section, node, table));
  if (w->id.empty()) return FieldError(absl::StrCat(section, ".id"), node, "required");
  return absl::OkStatus();
}

absl::Status ReadCurve(const YAML::Node& node, CurveSection* c) {
  const FieldTable table = {
      {"allow", StringField(&c->allow)},
      {"coordinator_public_key", StringField(&c->coordinator_public_key)},
      {"loader_public_key", StringField(&c->loader_public_key)},
  };
  RETURN_IF_ERROR(ReadMap("curve", node, table));
  if (c->allow.empty()) return FieldError("curve.allow", node, "required when curve: is given");
  return absl::OkStatus();
}

absl::Status ReadWorkers(const YAML::Node& node, std::vector<WorkerSection>* workers) {
  if (!node.IsSequence()) return FieldError("workers", node, "expected a list");
  std::set<std::string> ids;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string section = absl::StrCat("workers[", i, "]");
    WorkerSection worker;
    RETURN_IF_ERROR(ReadWorker(section, node[i], &worker));
    if (!ids.insert(worker.id).second) {
      return FieldError(absl::StrCat(section, ".id"), node[i],
                        absl::StrCat("duplicate worker id '", worker.id, "'"));
    }
    workers->push_back(std::move(worker));
  }
  return absl::OkStatus();
}

absl::Status ReadRoot(const YAML::Node& root, ClusterConfig* config) {
  if (!root.IsDefined() || root.IsNull()) return absl::OkStatus();  // empty file: all defaults
  if (!root.IsMap()) return FieldError("(top level)", root, "expected a mapping");
  std::set<std::string> seen;  // as in ReadMap: a repeated section would be read twice
  for (const auto& entry : root) {
    const std::string key = entry.first.Scalar();
    if (!seen.insert(key).second) return FieldError(key, entry.first, "duplicate key");
    if (key == "coordinator") {
      RETURN_IF_ERROR(ReadCoordinator(entry.second, &config->coordinator));
    } else if (key == "loader") {
      RETURN_IF_ERROR(ReadLoader(entry.second, &config->loader));
    } else if (key == "workers") {
      RETURN_IF_ERROR(ReadWorkers(entry.second, &config->workers));
    } else if (key == "curve") {
      RETURN_IF_ERROR(ReadCurve(entry.second, &config->curve));
    } else {
      return FieldError(key, entry.first,
                        "unknown key (expected coordinator, loader, workers or curve)");
    }
  }
  return absl::OkStatus();
}

// Quoted so that an id or path that looks like a number or contains ':' reads back the same.
std::string Quote(const std::string& text) {
  YAML::Emitter out;
  out << YAML::DoubleQuoted << text;
  return out.c_str();
}

}  // namespace

absl::Status ValidateCoordinatorSection(const CoordinatorSection& section) {
  if (section.tls_cert.empty() != section.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key go together: give both or neither");
  }
  if (!section.tls_client_ca.empty() && section.tls_cert.empty()) {
    return absl::InvalidArgumentError("tls_client_ca (mutual TLS) needs tls_cert and tls_key");
  }
  return absl::OkStatus();
}

const WorkerSection* ClusterConfig::FindWorker(std::string_view id) const {
  for (const WorkerSection& worker : workers) {
    if (worker.id == id) return &worker;
  }
  return nullptr;
}

std::string ClusterConfig::ToYaml() const {
  std::ostringstream out;
  out << "coordinator:\n"
      << "  host: " << Quote(coordinator.host) << "\n"
      << "  grpc_port: " << coordinator.grpc_port << "\n"
      << "  control_port: " << coordinator.control_port << "\n"
      << "  kv_slots: " << coordinator.kv_slots << "\n"
      << "  ctx_size: " << coordinator.ctx_size << "\n"
      << "  kv_tokens: " << coordinator.kv_tokens << "\n"
      << "  kv_type: " << coordinator.kv_type << "\n"
      << "  exact: " << (coordinator.exact ? "true" : "false") << "\n"
      << "  max_queue: " << coordinator.max_queue << "\n"
      << "  min_workers: " << coordinator.min_workers << "\n"
      << "  worker_timeout_ms: " << coordinator.worker_timeout_ms << "\n"
      << "  grace_ms: " << coordinator.grace_ms << "\n"
      << "  step_timeout_ms: " << coordinator.step_timeout_ms << "\n"
      << "  chain_steps: " << (coordinator.chain_steps ? "true" : "false") << "\n";
  if (coordinator.http_port >= 0) out << "  http_port: " << coordinator.http_port << "\n";
  for (const auto& [key, value] :
       {std::pair<const char*, const std::string*>{"http_host", &coordinator.http_host},
        {"chat_template", &coordinator.chat_template},
        {"api_key_file", &coordinator.api_key_file},
        {"tls_cert", &coordinator.tls_cert},
        {"tls_key", &coordinator.tls_key},
        {"tls_client_ca", &coordinator.tls_client_ca},
        {"curve_key", &coordinator.curve_key}}) {
    if (!value->empty()) out << "  " << key << ": " << Quote(*value) << "\n";
  }
  out << "loader:\n"
      << "  host: " << Quote(loader.host) << "\n"
      << "  port: " << loader.port << "\n"
      << "  model: " << Quote(loader.model) << "\n";
  if (!loader.curve_key.empty()) out << "  curve_key: " << Quote(loader.curve_key) << "\n";
  if (!curve.allow.empty()) {
    out << "curve:\n"
        << "  allow: " << Quote(curve.allow) << "\n";
    if (!curve.coordinator_public_key.empty())
      out << "  coordinator_public_key: " << Quote(curve.coordinator_public_key) << "\n";
    if (!curve.loader_public_key.empty())
      out << "  loader_public_key: " << Quote(curve.loader_public_key) << "\n";
  }
  if (workers.empty()) {
    out << "workers: []\n";
    return out.str();
  }
  out << "workers:\n";
  for (const WorkerSection& w : workers) {
    out << "  - id: " << Quote(w.id) << "\n"
        << "    host: " << Quote(w.host) << "\n"
        << "    data_port: " << w.data_port << "\n"
        << "    memory_budget: " << w.memory_budget << "\n"
        << "    gpu_memory_budget: " << w.gpu_memory_budget << "\n"
        << "    backend: " << w.backend << "\n"
        << "    device: " << w.device << "\n"
        << "    threads: " << w.threads << "\n"
        << "    nccl: " << (w.nccl ? "true" : "false") << "\n";
    if (!w.nccl_interface.empty()) out << "    nccl_interface: " << Quote(w.nccl_interface) << "\n";
    if (!w.curve_key.empty()) out << "    curve_key: " << Quote(w.curve_key) << "\n";
  }
  return out.str();
}

absl::StatusOr<ClusterConfig> ParseClusterConfig(std::string_view yaml) {
  ClusterConfig config;
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
    RETURN_IF_ERROR(ReadRoot(root, &config));
  } catch (const YAML::Exception& e) {
    // yaml-cpp reports syntax errors by exception; they stop at this boundary.
    return absl::InvalidArgumentError(
        absl::StrCat("cluster config: line ", e.mark.line + 1, ": ", e.msg));
  }
  return config;
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open cluster config ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  absl::StatusOr<ClusterConfig> config = ParseClusterConfig(buffer.str());
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", std::string(config.status().message())));
  }
  return config;
}

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  std::string_view body = text;
  while (!body.empty() && absl::ascii_isspace(body.front())) body.remove_prefix(1);
  while (!body.empty() && absl::ascii_isspace(body.back())) body.remove_suffix(1);
  int shift = 0;
  if (!body.empty()) {
    switch (absl::ascii_toupper(body.back())) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        break;
    }
    if (shift != 0) body.remove_suffix(1);
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(body.data(), body.data() + body.size(), value);
  if (body.empty() || ec != std::errc() || end != body.data() + body.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad size '", std::string(text), "' (expected e.g. 4096, 512K, 2M, 2G, 1T)"));
  }
  if (shift != 0 && value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(
        absl::StrCat("size '", std::string(text), "' overflows 64 bits"));
  }
  return value << shift;
}

}  // namespace chord
