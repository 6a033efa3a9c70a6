#include "common/wire/curve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/status.h"

namespace chord::wire {
namespace {

constexpr char kZapEndpoint[] = "inproc://zeromq.zap.01";
constexpr int kZapPollMs = 100;

absl::Status CheckZ85Key(std::string_view key, const std::string& what) {
  std::array<uint8_t, 32> decoded{};
  const std::string text(key);
  if (text.size() != kCurveKeyZ85Length ||
      zmq_z85_decode(decoded.data(), text.c_str()) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a Z85 CURVE key (40 characters of ZeroMQ's Z85 alphabet)"));
  }
  return absl::OkStatus();
}

// The key lines of a key file (comments and blank lines dropped).
absl::StatusOr<std::vector<std::string>> ReadKeyLines(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read key file ", path));
  std::vector<std::string> keys;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    const std::string key(absl::StripAsciiWhitespace(line));
    if (key.empty() || key.front() == '#') continue;
    RETURN_IF_ERROR(CheckZ85Key(key, absl::StrCat(path, ":", line_number)));
    keys.emplace_back(key);
  }
  return keys;
}

absl::StatusOr<std::string> ReadSingleKey(const std::string& path) {
  ASSIGN_OR_RETURN(std::vector<std::string> keys, ReadKeyLines(path));
  if (keys.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected one key, found ", keys.size()));
  }
  return keys.front();
}

absl::Status WriteFileWithMode(const std::string& path, const std::string& contents, mode_t mode,
                               bool overwrite) {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL);
  const int fd = ::open(path.c_str(), flags, mode);
  if (fd < 0) {
    if (errno == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat(path, " exists (use --force to replace it)"));
    }
    return absl::UnavailableError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  // An overwritten file keeps its old mode; a secret must never stay readable.
  absl::Status status = absl::OkStatus();
  if (::fchmod(fd, mode) != 0 ||
      ::write(fd, contents.data(), contents.size()) != static_cast<ssize_t>(contents.size())) {
    status =
        absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  if (::close(fd) != 0 && status.ok()) {
    status =
        absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return status;
}

absl::Status SetOption(zmq::socket_t& socket, int option, const void* value, size_t size) {
  if (zmq_setsockopt(socket.handle(), option, value, size) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("zmq_setsockopt(", option, "): ", zmq_strerror(zmq_errno())));
  }
  return absl::OkStatus();
}

absl::Status SetKeyOption(zmq::socket_t& socket, int option, const std::string& z85) {
  return SetOption(socket, option, z85.c_str(), z85.size() + 1);  // Z85 form: 41 bytes with NUL
}

std::string FrameText(const zmq::message_t& frame) {
  return std::string(static_cast<const char*>(frame.data()), frame.size());
}

}  // namespace

absl::StatusOr<CurveKeyPair> GenerateCurveKeyPair() {
  if (!zmq_has("curve")) return absl::UnimplementedError("libzmq was built without CURVE");
  std::array<char, kCurveKeyZ85Length + 1> public_key{};
  std::array<char, kCurveKeyZ85Length + 1> secret_key{};
  if (zmq_curve_keypair(public_key.data(), secret_key.data()) != 0) {
    return absl::InternalError(absl::StrCat("zmq_curve_keypair: ", zmq_strerror(zmq_errno())));
  }
  return CurveKeyPair{public_key.data(), secret_key.data()};
}

absl::Status WriteCurveKeyPair(const CurveKeyPair& keys, const std::string& prefix,
                               bool overwrite) {
  RETURN_IF_ERROR(CheckZ85Key(keys.public_key, "public key"));
  RETURN_IF_ERROR(CheckZ85Key(keys.secret_key, "secret key"));
  const std::string secret_path = prefix + ".key";
  const std::string public_path = prefix + ".pub";
  // Refuse before writing anything, so a refusal never leaves half a pair.
  if (!overwrite) {
    for (const std::string& path : {secret_path, public_path}) {
      if (std::filesystem::exists(path)) {
        return absl::AlreadyExistsError(absl::StrCat(path, " exists (use --force to replace it)"));
      }
    }
  }
  RETURN_IF_ERROR(WriteFileWithMode(
      secret_path, absl::StrCat("# chord CURVE secret key: keep private\n", keys.secret_key, "\n"),
      0600, overwrite));
  return WriteFileWithMode(public_path,
                           absl::StrCat("# chord CURVE public key\n", keys.public_key, "\n"), 0644,
                           overwrite);
}

absl::StatusOr<CurveKeyPair> ReadCurveSecretKey(const std::string& path) {
  ASSIGN_OR_RETURN(std::string secret, ReadSingleKey(path));
  std::array<char, kCurveKeyZ85Length + 1> public_key{};
  if (zmq_curve_public(public_key.data(), secret.c_str()) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot derive the public key"));
  }
  return CurveKeyPair{public_key.data(), std::move(secret)};
}

absl::StatusOr<std::string> ReadCurvePublicKey(const std::string& path) {
  return ReadSingleKey(path);
}

absl::StatusOr<std::vector<std::string>> LoadCurveAllowList(const std::string& path) {
  std::vector<std::string> keys;
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    for (const auto& entry : std::filesystem::directory_iterator(path, error)) {
      if (entry.path().extension() != ".pub") continue;
      ASSIGN_OR_RETURN(std::vector<std::string> file_keys, ReadKeyLines(entry.path().string()));
      keys.insert(keys.end(), file_keys.begin(), file_keys.end());
    }
    if (error) {
      return absl::NotFoundError(absl::StrCat("cannot list ", path, ": ", error.message()));
    }
  } else {
    ASSIGN_OR_RETURN(keys, ReadKeyLines(path));
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("allow-list ", path, " holds no public key"));
  }
  return keys;
}

absl::Status MakeCurveServer(zmq::socket_t& socket, const CurveKeyPair& own,
                             std::string_view zap_domain) {
  RETURN_IF_ERROR(CheckZ85Key(own.secret_key, "server secret key"));
  const int on = 1;
  RETURN_IF_ERROR(SetOption(socket, ZMQ_CURVE_SERVER, &on, sizeof(on)));
  RETURN_IF_ERROR(SetKeyOption(socket, ZMQ_CURVE_SECRETKEY, own.secret_key));
  return SetOption(socket, ZMQ_ZAP_DOMAIN, zap_domain.data(), zap_domain.size());
}

absl::Status MakeCurveClient(zmq::socket_t& socket, const CurveKeyPair& own,
                             std::string_view server_public_key) {
  RETURN_IF_ERROR(CheckZ85Key(own.public_key, "client public key"));
  RETURN_IF_ERROR(CheckZ85Key(own.secret_key, "client secret key"));
  RETURN_IF_ERROR(CheckZ85Key(server_public_key, "server public key"));
  RETURN_IF_ERROR(SetKeyOption(socket, ZMQ_CURVE_SERVERKEY, std::string(server_public_key)));
  RETURN_IF_ERROR(SetKeyOption(socket, ZMQ_CURVE_PUBLICKEY, own.public_key));
  return SetKeyOption(socket, ZMQ_CURVE_SECRETKEY, own.secret_key);
}

absl::StatusOr<CurveSetup> LoadCurveSetup(const CurveFiles& files) {
  CurveSetup setup;
  if (files.secret_key.empty() != files.allow.empty()) {
    return absl::InvalidArgumentError(
        "CURVE needs both this process's secret key and an allow-list of peers' public keys");
  }
  if (files.secret_key.empty()) {
    if (!files.coordinator_public_key.empty() || !files.loader_public_key.empty()) {
      return absl::InvalidArgumentError(
          "CURVE public keys of servers are named but this process has no secret key");
    }
    return setup;
  }
  ASSIGN_OR_RETURN(setup.own, ReadCurveSecretKey(files.secret_key));
  ASSIGN_OR_RETURN(setup.allowed, LoadCurveAllowList(files.allow));
  if (!files.coordinator_public_key.empty()) {
    ASSIGN_OR_RETURN(setup.coordinator_public_key, ReadCurvePublicKey(files.coordinator_public_key));
  }
  if (!files.loader_public_key.empty()) {
    ASSIGN_OR_RETURN(setup.loader_public_key, ReadCurvePublicKey(files.loader_public_key));
  }
  return setup;
}

absl::Status RequireCoordinatorKey(const CurveSetup& setup) {
  if (setup.enabled() && setup.coordinator_public_key.empty()) {
    return absl::InvalidArgumentError("CURVE is on: the coordinator's public key is required");
  }
  return absl::OkStatus();
}

absl::Status RequireLoaderKey(const CurveSetup& setup) {
  if (setup.enabled() && setup.loader_public_key.empty()) {
    return absl::InvalidArgumentError("CURVE is on: the loader's public key is required");
  }
  return absl::OkStatus();
}

absl::Status SecureServer(zmq::socket_t& socket, const CurveSetup& setup) {
  if (!setup.enabled()) return absl::OkStatus();
  return MakeCurveServer(socket, setup.own);
}

absl::Status SecureClient(zmq::socket_t& socket, const CurveSetup& setup,
                          std::string_view server_public_key) {
  if (!setup.enabled()) return absl::OkStatus();
  if (server_public_key.empty()) {
    return absl::InvalidArgumentError("CURVE is on but the server's public key is unknown");
  }
  return MakeCurveClient(socket, setup.own, server_public_key);
}

absl::Status MakeCurveServerFromFile(zmq::socket_t& socket, const std::string& secret_key_path) {
  ASSIGN_OR_RETURN(CurveKeyPair own, ReadCurveSecretKey(secret_key_path));
  return MakeCurveServer(socket, own);
}

absl::Status MakeCurveClientFromFiles(zmq::socket_t& socket, const std::string& secret_key_path,
                                      const std::string& server_public_key_path) {
  ASSIGN_OR_RETURN(CurveKeyPair own, ReadCurveSecretKey(secret_key_path));
  ASSIGN_OR_RETURN(std::string server_key, ReadCurvePublicKey(server_public_key_path));
  return MakeCurveClient(socket, own, server_key);
}

absl::StatusOr<std::unique_ptr<ZapHandler>> ZapHandler::Start(zmq::context_t& context,
                                                              std::vector<std::string> allowed) {
  std::set<std::string> allowed_set;
  for (const std::string& key : allowed) {
    RETURN_IF_ERROR(CheckZ85Key(key, "allow-list key"));
    allowed_set.insert(key);
  }
  zmq::socket_t socket(context, zmq::socket_type::rep);
  socket.set(zmq::sockopt::linger, 0);
  try {
    socket.bind(kZapEndpoint);
  } catch (const zmq::error_t& error) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot bind ", kZapEndpoint, " (one ZAP handler per context): ", error.what()));
  }
  std::unique_ptr<ZapHandler> handler(new ZapHandler(std::move(socket), std::move(allowed_set)));
  handler->thread_ = std::thread([raw = handler.get()] { raw->Serve(); });
  return handler;
}

absl::StatusOr<std::unique_ptr<ZapHandler>> ZapHandler::StartFor(zmq::context_t& context,
                                                                 const CurveSetup& setup) {
  if (!setup.enabled()) return std::unique_ptr<ZapHandler>();
  return Start(context, setup.allowed);
}

ZapHandler::ZapHandler(zmq::socket_t socket, std::set<std::string> allowed)
    : socket_(std::move(socket)), allowed_(std::move(allowed)) {}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::Serve() {
  while (!stop_.load()) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::milliseconds(kZapPollMs)) <= 0) continue;
    std::vector<zmq::message_t> frames;
    bool more = true;
    while (more) {
      zmq::message_t frame;
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
      more = frame.more();
      frames.push_back(std::move(frame));
    }
    if (!frames.empty()) HandleRequest(frames);
  }
}

void ZapHandler::HandleRequest(std::vector<zmq::message_t>& frames) {
  // RFC 27: version, request id, domain, address, identity, mechanism, credentials...
  const std::string request_id = frames.size() > 1 ? FrameText(frames[1]) : std::string();
  const std::string address = frames.size() > 3 ? FrameText(frames[3]) : std::string("?");
  const std::string mechanism = frames.size() > 5 ? FrameText(frames[5]) : std::string("?");
  std::string peer_key;
  if (mechanism == "CURVE" && frames.size() > 6 && frames[6].size() == 32) {
    std::array<char, kCurveKeyZ85Length + 1> z85{};
    zmq_z85_encode(z85.data(), static_cast<const uint8_t*>(frames[6].data()), 32);
    peer_key = z85.data();
  }
  const bool admit = frames.size() >= 6 && FrameText(frames[0]) == "1.0" && !peer_key.empty() &&
                     allowed_.contains(peer_key);
  if (admit) {
    admitted_.fetch_add(1);
    log::Debug("zap: admitted %s from %s", peer_key, address);
  } else {
    refused_.fetch_add(1);
    const std::string who = peer_key.empty() ? mechanism + " (no key)" : peer_key;
    const auto now = std::chrono::steady_clock::now();
    if (last_logged_.size() > 1024) last_logged_.clear();  // bounded against a flood of new keys
    auto [last, first] = last_logged_.try_emplace(who, now);
    if (first || now - last->second >= std::chrono::seconds(10)) {
      last->second = now;
      log::Warn("zap: refused %s peer %s from %s (not in the allow-list)", mechanism, who, address);
    }
  }
  const std::array<std::string, 6> reply = {"1.0",
                                            request_id,
                                            admit ? "200" : "400",
                                            admit ? "OK" : "key not allowed",
                                            admit ? peer_key : std::string(),
                                            std::string()};
  for (size_t i = 0; i < reply.size(); ++i) {
    const auto flags = i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    if (!socket_.send(zmq::buffer(reply[i]), flags | zmq::send_flags::dontwait)) {
      log::Warn("zap: cannot reply to %s", address);
      return;
    }
  }
}

}  // namespace chord::wire
