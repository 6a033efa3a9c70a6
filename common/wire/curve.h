// CURVE security for chord's ZeroMQ links: key pairs on disk (`chord keygen`),
// helpers that turn a socket into a CURVE server or client, and a ZAP handler
// that admits only the public keys of an allow-list.
//
// Key files hold one Z85-encoded key (40 characters) on a line; lines starting
// with '#' are comments. PREFIX.key holds the secret key (the public key is
// derived from it), PREFIX.pub the public key.
//
// Errors: keys and files come from operators, so every malformed key or
// unreadable file is an absl::Status (INVALID_ARGUMENT / NOT_FOUND /
// ALREADY_EXISTS), never a crash.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zmq.hpp"

namespace chord::wire {

inline constexpr size_t kCurveKeyZ85Length = 40;

struct CurveKeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters
};

// UNIMPLEMENTED when libzmq was built without CURVE.
absl::StatusOr<CurveKeyPair> GenerateCurveKeyPair();

// Writes PREFIX.key (mode 0600, created that way, never widened) and
// PREFIX.pub (0644). ALREADY_EXISTS when either exists and !overwrite.
absl::Status WriteCurveKeyPair(const CurveKeyPair& keys, const std::string& prefix, bool overwrite);

// Reads a PREFIX.key file and derives its public key.
absl::StatusOr<CurveKeyPair> ReadCurveSecretKey(const std::string& path);
absl::StatusOr<std::string> ReadCurvePublicKey(const std::string& path);

// Allow-list from `path`: a directory (every *.pub file in it) or a file of
// public keys, one a line. INVALID_ARGUMENT for a malformed key, and for an
// empty list (admitting nobody is never what an operator means).
absl::StatusOr<std::vector<std::string>> LoadCurveAllowList(const std::string& path);

// What one process needs to run CURVE on its links: its own key pair, the
// allow-list that its bound sockets admit, and the public keys of the servers
// it connects to. Plaintext (every call below a no-op) when disabled.
struct CurveSetup {
  CurveKeyPair own;
  std::vector<std::string> allowed;     // Z85 public keys admitted by this process's ZAP handler
  std::string coordinator_public_key;   // Z85; needed by processes that connect to the coordinator
  std::string loader_public_key;        // Z85; needed by processes that connect to the loader
  bool enabled() const { return !own.secret_key.empty(); }
};

// The key files behind a CurveSetup, as the cluster config and flags name them.
struct CurveFiles {
  std::string secret_key;              // PREFIX.key of this process
  std::string allow;                   // a directory of *.pub files, or a file of keys
  std::string coordinator_public_key;  // coordinator's PREFIX.pub
  std::string loader_public_key;       // loader's PREFIX.pub
};

// All fields empty: plaintext (a disabled setup). A secret key without an
// allow-list or the reverse is INVALID_ARGUMENT: half of CURVE would leave one
// direction open. Public keys are read when named; a process checks that the
// ones it needs are there with RequireCoordinatorKey/RequireLoaderKey.
absl::StatusOr<CurveSetup> LoadCurveSetup(const CurveFiles& files);
absl::Status RequireCoordinatorKey(const CurveSetup& setup);
absl::Status RequireLoaderKey(const CurveSetup& setup);

// Makes `socket` a CURVE server (admitted by the context's ZAP handler) or a
// client of the server with `server_public_key`; both no-ops when `setup` is
// disabled. Call before bind()/connect(). INVALID_ARGUMENT for an empty or
// malformed server key when enabled.
absl::Status SecureServer(zmq::socket_t& socket, const CurveSetup& setup);
absl::Status SecureClient(zmq::socket_t& socket, const CurveSetup& setup,
                          std::string_view server_public_key);

// Call before bind()/connect(). `zap_domain` lets a ZapHandler see the socket.
absl::Status MakeCurveServer(zmq::socket_t& socket, const CurveKeyPair& own,
                             std::string_view zap_domain = "chord");
absl::Status MakeCurveClient(zmq::socket_t& socket, const CurveKeyPair& own,
                             std::string_view server_public_key);
// The same from key files (PREFIX.key, and the server's PREFIX.pub).
absl::Status MakeCurveServerFromFile(zmq::socket_t& socket, const std::string& secret_key_path);
absl::Status MakeCurveClientFromFiles(zmq::socket_t& socket, const std::string& secret_key_path,
                                      const std::string& server_public_key_path);

// Serves ZeroMQ's authentication protocol (ZAP, RFC 27) for every socket of
// one context: CURVE peers whose public key is in the allow-list are admitted,
// all others (other keys, other mechanisms) refused and logged with their
// address. Start it before any CURVE server socket binds, and destroy it
// before the context (it owns a socket of that context). Thread-safe: the
// handler runs on its own thread; refused_count() may be read from any thread.
class ZapHandler {
 public:
  static absl::StatusOr<std::unique_ptr<ZapHandler>> Start(zmq::context_t& context,
                                                           std::vector<std::string> allowed);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // Starts a handler when `setup` is enabled; nullptr (and OK) when it is not.
  static absl::StatusOr<std::unique_ptr<ZapHandler>> StartFor(zmq::context_t& context,
                                                              const CurveSetup& setup);

  int refused_count() const { return refused_.load(); }
  int admitted_count() const { return admitted_.load(); }

 private:
  ZapHandler(zmq::socket_t socket, std::set<std::string> allowed);
  void Serve();
  void HandleRequest(std::vector<zmq::message_t>& frames);

  zmq::socket_t socket_;
  std::set<std::string> allowed_;  // Z85 public keys
  // When each refused key was last logged: a refused peer reconnects every
  // few hundred milliseconds, and one line per 10 s says as much as all.
  std::map<std::string, std::chrono::steady_clock::time_point> last_logged_;
  std::atomic<bool> stop_{false};
  std::atomic<int> refused_{0};
  std::atomic<int> admitted_{0};
  std::thread thread_;
};

}  // namespace chord::wire
