// soak: N concurrent streaming gRPC clients for D seconds against a running
// chord server, each looping requests with varied prompts, max_tokens and
// sampling (seeded). Records errors by status code, time to first token and
// inter-token latency (p50/p99), and every --sample-every seconds the RSS
// (VmRSS) of the server's processes (the children of --serve-pid: loader,
// coordinator, workers). At the end, checks that GetServerInfo's running and
// queued counts return to 0. Prints tables; exits 1 when a check fails
// (an error, RSS growth over --max-growth, requests left running).
//
// RSS growth is measured from the first sample after --warmup seconds (caches,
// allocator pools and gRPC buffers fill in the first seconds), to the last.
//
//   soak --server 127.0.0.1:50051 --serve-pid PID [--clients 64] [--duration 600] [--seed 1]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "CLI/CLI.hpp"
#include "bench/bench_timing.h"
#include "chord/v1/inference.grpc.pb.h"

namespace chord {
namespace {

using bench::Clock;

struct SoakFlags {
  std::string server = "127.0.0.1:50051";
  int serve_pid = 0;
  int clients = 64;
  double duration_s = 600;
  double sample_every_s = 10;
  double warmup_s = 10;
  double max_growth_percent = 5;
  uint64_t seed = 1;
  int min_tokens = 8;
  int max_tokens = 96;
};

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(p * static_cast<double>(values.size())));
  return values[index];
}

// What one client saw; merged at the end.
struct ClientStats {
  int requests = 0;
  int64_t tokens = 0;
  std::map<int, int> errors;  // grpc::StatusCode -> count
  std::map<int, std::string> first_error;
  std::vector<double> ttft;  // seconds
  std::vector<double> itl;   // seconds per token after the first
};

const std::vector<std::string> kPrompts = {
    "Once upon a time", "The little dog", "Lily and Ben went to the park", "One day",
    "There was a big red ball", "Tom had a toy car", "The sun was shining and", "Sara liked to sing",
};

v1::GenerateRequest MakeRequest(std::mt19937_64& rng, const SoakFlags& flags) {
  v1::GenerateRequest request;
  std::string prompt = kPrompts[rng() % kPrompts.size()];
  // A varied length: the prompt repeated 1-4 times.
  for (int repeat = static_cast<int>(rng() % 4); repeat > 0; --repeat) prompt += ". " + kPrompts[rng() % kPrompts.size()];
  request.set_prompt(prompt);
  request.set_max_tokens(static_cast<uint32_t>(flags.min_tokens + rng() % (flags.max_tokens - flags.min_tokens + 1)));
  request.set_ignore_eos(rng() % 2 == 0);
  if (rng() % 2 == 0) {
    request.mutable_sampling()->set_temperature(0.0f);
  } else {
    request.mutable_sampling()->set_temperature(0.8f);
    request.mutable_sampling()->set_top_p(0.95f);
    request.mutable_sampling()->set_seed(rng());
  }
  return request;
}

void RunClient(v1::Inference::Stub& stub, const SoakFlags& flags, uint64_t seed, Clock::time_point end,
               ClientStats* stats) {
  std::mt19937_64 rng(seed);
  while (Clock::now() < end) {
    const v1::GenerateRequest request = MakeRequest(rng, flags);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    const Clock::time_point start = Clock::now();
    Clock::time_point last{};
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(&context, request);
    v1::GenerateResponse response;
    int64_t tokens = 0;
    while (reader->Read(&response)) {
      const int n = response.token_ids_size();
      if (n == 0) continue;
      const Clock::time_point now = Clock::now();
      if (tokens == 0) {
        stats->ttft.push_back(std::chrono::duration<double>(now - start).count());
      } else {
        const double gap = std::chrono::duration<double>(now - last).count();
        for (int i = 0; i < n; ++i) stats->itl.push_back(gap / n);
      }
      last = now;
      tokens += n;
    }
    const grpc::Status status = reader->Finish();
    ++stats->requests;
    stats->tokens += tokens;
    if (!status.ok()) {
      const int code = static_cast<int>(status.error_code());
      if (stats->errors[code]++ == 0) stats->first_error[code] = status.error_message();
    }
  }
}

// The server's processes: the children of `parent`, by /proc/<pid>/stat.
struct Process {
  int pid = 0;
  std::string name;  // comm, plus the worker id for workers
};

std::vector<Process> ChildrenOf(int parent) {
  std::vector<Process> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.empty() || !std::all_of(pid.begin(), pid.end(), ::isdigit)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    int ppid = 0;
    char state = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) != 2 || ppid != parent) continue;
    Process process{std::stoi(pid), line.substr(line.find('(') + 1, close - line.find('(') - 1)};
    std::ifstream cmdline(entry.path() / "cmdline");
    std::vector<std::string> args;
    for (std::string arg; std::getline(cmdline, arg, '\0');) args.push_back(arg);
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--id" || args[i] == "--worker-id") process.name += " " + args[i + 1];
    }
    out.push_back(process);
  }
  std::sort(out.begin(), out.end(), [](const Process& a, const Process& b) { return a.name < b.name; });
  return out;
}

// VmRSS in KiB, or -1 when the process is gone.
int64_t RssKib(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

v1::ServerInfo GetInfo(v1::Inference::Stub& stub, grpc::Status* status) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ServerInfo info;
  *status = stub.GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  return info;
}

int Run(const SoakFlags& flags) {
  auto channel = grpc::CreateChannel(flags.server, grpc::InsecureChannelCredentials());
  auto stub = v1::Inference::NewStub(channel);
  // The server may still be starting: wait (bounded) until every stage is ready.
  grpc::Status status;
  const Clock::time_point ready_by = Clock::now() + std::chrono::seconds(120);
  for (;;) {
    const v1::ServerInfo info = GetInfo(*stub, &status);
    if (status.ok() && info.plan_version() > 0) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::GenerateRequest probe;
      probe.set_prompt("Once");
      probe.set_max_tokens(1);
      auto reader = stub->Generate(&context, probe);
      v1::GenerateResponse response;
      while (reader->Read(&response)) {
      }
      if (reader->Finish().ok()) break;
    }
    if (Clock::now() > ready_by) {
      std::fprintf(stderr, "soak: %s is not serving after 120 s\n", flags.server.c_str());
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  const std::vector<Process> processes = flags.serve_pid > 0 ? ChildrenOf(flags.serve_pid) : std::vector<Process>{};
  struct Sample {
    double at_s;
    std::vector<int64_t> rss_kib;
  };
  std::vector<Sample> samples;
  const Clock::time_point start = Clock::now();
  const Clock::time_point end = start + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(flags.duration_s));
  std::vector<ClientStats> stats(static_cast<size_t>(flags.clients));
  std::vector<std::thread> clients;
  std::mt19937_64 seeds(flags.seed);
  for (int i = 0; i < flags.clients; ++i) {
    clients.emplace_back(RunClient, std::ref(*stub), std::cref(flags), seeds(), end, &stats[static_cast<size_t>(i)]);
  }
  // Samples at 0, every --sample-every seconds, and at the end (this thread sleeps between them: it is a clock).
  for (double next = 0;; next += flags.sample_every_s) {
    const Clock::time_point at = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(next));
    if (at > end) break;
    std::this_thread::sleep_until(at);
    Sample sample{bench::Seconds(start), {}};
    for (const Process& p : processes) sample.rss_kib.push_back(RssKib(p.pid));
    samples.push_back(sample);
    std::fprintf(stderr, "soak: %5.0f s:", sample.at_s);
    for (size_t i = 0; i < processes.size(); ++i) {
      std::fprintf(stderr, " %s %.1f MiB", processes[i].name.c_str(), sample.rss_kib[i] / 1024.0);
    }
    std::fprintf(stderr, "\n");
  }
  for (std::thread& client : clients) client.join();
  const double elapsed = bench::Seconds(start);
  Sample last{elapsed, {}};
  for (const Process& p : processes) last.rss_kib.push_back(RssKib(p.pid));
  samples.push_back(last);

  // Every request has ended on the client side: the server's counts must return to 0.
  v1::ServerInfo info;
  const Clock::time_point idle_by = Clock::now() + std::chrono::seconds(30);
  do {
    info = GetInfo(*stub, &status);
    if (status.ok() && info.running_requests() == 0 && info.queued_requests() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (Clock::now() < idle_by);

  ClientStats all;
  for (const ClientStats& s : stats) {
    all.requests += s.requests;
    all.tokens += s.tokens;
    for (const auto& [code, count] : s.errors) all.errors[code] += count;
    for (const auto& [code, message] : s.first_error) all.first_error.emplace(code, message);
    all.ttft.insert(all.ttft.end(), s.ttft.begin(), s.ttft.end());
    all.itl.insert(all.itl.end(), s.itl.begin(), s.itl.end());
  }
  int errors = 0;
  for (const auto& [code, count] : all.errors) errors += count;

  std::printf("# soak: %d clients, %.0f s, seed %llu, against %s\n\n", flags.clients, elapsed,
              static_cast<unsigned long long>(flags.seed), flags.server.c_str());
  std::printf("| requests | errors | tokens | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |\n");
  std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  std::printf("| %d | %d | %lld | %.0f | %.1f ms | %.1f ms | %.2f ms | %.2f ms |\n\n", all.requests, errors,
              static_cast<long long>(all.tokens), static_cast<double>(all.tokens) / elapsed,
              Percentile(all.ttft, 0.5) * 1e3, Percentile(all.ttft, 0.99) * 1e3, Percentile(all.itl, 0.5) * 1e3,
              Percentile(all.itl, 0.99) * 1e3);
  for (const auto& [code, count] : all.errors) {
    std::printf("errors with status %d: %d (first: %s)\n", code, count, all.first_error[code].c_str());
  }
  // Growth from the first sample past the warm-up (or the first sample when the run is shorter).
  size_t base = 0;
  while (base + 1 < samples.size() && samples[base].at_s < flags.warmup_s) ++base;
  if (base + 1 == samples.size()) base = 0;
  bool rss_ok = true;
  if (!processes.empty()) {
    std::printf("| process | pid | RSS at %.0f s | RSS at end | RSS max | growth |\n", samples[base].at_s);
    std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t i = 0; i < processes.size(); ++i) {
      int64_t max = 0;
      for (const Sample& s : samples) max = std::max(max, s.rss_kib[i]);
      const int64_t first = samples[base].rss_kib[i], final_rss = samples.back().rss_kib[i];
      const double growth = first > 0 ? 100.0 * static_cast<double>(final_rss - first) / static_cast<double>(first) : 0;
      if (final_rss < 0 || growth > flags.max_growth_percent) rss_ok = false;
      std::printf("| %s | %d | %.1f MiB | %.1f MiB | %.1f MiB | %+.1f %% |\n", processes[i].name.c_str(),
                  processes[i].pid, first / 1024.0, final_rss / 1024.0, max / 1024.0, growth);
    }
    std::printf("\n");
  }
  std::printf("final: running_requests %u, queued_requests %u%s\n", info.running_requests(),
              info.queued_requests(), status.ok() ? "" : " (GetServerInfo failed)");
  const bool idle = status.ok() && info.running_requests() == 0 && info.queued_requests() == 0;
  const bool ok = errors == 0 && rss_ok && idle && all.requests > 0;
  std::printf("soak: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace chord

int main(int argc, char** argv) {
  chord::SoakFlags flags;
  CLI::App app{"soak: concurrent streaming clients against a chord server, with latency and RSS over time"};
  app.add_option("--server", flags.server, "gRPC address of the server");
  app.add_option("--serve-pid", flags.serve_pid, "pid of `chord serve`: its children's RSS is sampled");
  app.add_option("--clients", flags.clients, "concurrent streaming clients")->check(CLI::Range(1, 4096));
  app.add_option("--duration", flags.duration_s, "seconds of load")->check(CLI::PositiveNumber);
  app.add_option("--sample-every", flags.sample_every_s, "seconds between RSS samples")->check(CLI::PositiveNumber);
  app.add_option("--warmup", flags.warmup_s, "seconds before the RSS baseline sample");
  app.add_option("--max-growth", flags.max_growth_percent, "RSS growth (%) above which the run fails");
  app.add_option("--seed", flags.seed, "seed of the request mix");
  app.add_option("--min-tokens", flags.min_tokens, "smallest max_tokens")->check(CLI::Range(1, 100000));
  app.add_option("--max-tokens", flags.max_tokens, "largest max_tokens")->check(CLI::Range(1, 100000));
  CLI11_PARSE(app, argc, argv);
  if (flags.max_tokens < flags.min_tokens) flags.max_tokens = flags.min_tokens;
  return chord::Run(flags);
}
