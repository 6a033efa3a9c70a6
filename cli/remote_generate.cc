#include "cli/remote_generate.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "chord/v1/inference.grpc.pb.h"
#include "cli/serve/grpc_client.h"

namespace chord::cli {
namespace {

void PrintError(const char* what, const grpc::Status& status) {
  // gRPC's codes are absl's, number for number; the name is what people search for.
  const std::string code =
      absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  std::fprintf(stderr, "\nchord generate: %s: %s (%s, gRPC code %d)\n", what,
               status.error_message().c_str(), code.c_str(), static_cast<int>(status.error_code()));
}

v1::GenerateRequest MakeRequest(const GenerateFlags& flags) {
  v1::GenerateRequest request;
  request.set_prompt(flags.prompt);
  request.set_max_tokens(static_cast<uint32_t>(flags.max_tokens));
  v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_temperature(flags.sampling.temperature);
  sampling->set_top_k(flags.sampling.top_k);
  sampling->set_top_p(flags.sampling.top_p);
  sampling->set_min_p(flags.sampling.min_p);
  sampling->set_repetition_penalty(flags.sampling.repetition_penalty);
  sampling->set_presence_penalty(flags.sampling.presence_penalty);
  sampling->set_frequency_penalty(flags.sampling.frequency_penalty);
  sampling->set_seed(flags.sampling.seed);
  for (const std::string& stop : flags.stop) request.add_stop(stop);
  request.set_ignore_eos(flags.ignore_eos);
  request.set_logprobs(static_cast<uint32_t>(flags.logprobs));
  return request;
}

const char* FinishName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_ABORT: return "abort";
    default: return "unspecified";
  }
}

// Flags that only mean something in-process; the API has no field for them.
void WarnAboutLocalOnlyFlags(const GenerateFlags& flags) {
  if (flags.sampling.penalty_last_n != SamplingParams().penalty_last_n) {
    std::fprintf(stderr, "chord generate: --repeat-last-n is not part of the API; the server uses its default\n");
  }
  if (flags.n_ctx != 0 || flags.threads != 0 || flags.kv_type != "f32") {
    std::fprintf(stderr, "chord generate: --ctx-size, --threads and --kv-type are the server's choice; ignored\n");
  }
}

}  // namespace

int RunRemoteGenerate(const GenerateFlags& flags) {
  WarnAboutLocalOnlyFlags(flags);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      serve::ClientCredentials({flags.tls_ca, flags.tls_cert, flags.tls_key});
  if (!credentials.ok()) {
    std::fprintf(stderr, "chord generate: %s\n", credentials.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(flags.server, *credentials);
  std::unique_ptr<v1::Inference::Stub> stub = v1::Inference::NewStub(channel);
  const char* env_key = std::getenv("CHORD_API_KEY");
  const std::string api_key = !flags.api_key.empty() ? flags.api_key : env_key != nullptr ? env_key : "";
  auto authorize = [&](grpc::ClientContext& context) {
    if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
  };

  std::vector<int32_t> prompt_ids;
  if (flags.json) {
    grpc::ClientContext context;
    authorize(context);
    v1::TokenizeRequest request;
    request.set_text(flags.prompt);
    request.set_add_special(true);
    v1::TokenizeResponse response;
    grpc::Status status = stub->Tokenize(&context, request, &response);
    if (!status.ok()) {
      PrintError("Tokenize", status);
      return 1;
    }
    prompt_ids.assign(response.token_ids().begin(), response.token_ids().end());
  } else {
    std::fputs(flags.prompt.c_str(), stdout);
    std::fflush(stdout);
  }

  grpc::ClientContext context;
  authorize(context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub->Generate(&context, MakeRequest(flags));
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<std::vector<TokenLogprob>> top_logprobs;
  v1::FinalInfo final_info;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    token_ids.insert(token_ids.end(), response.token_ids().begin(), response.token_ids().end());
    text += response.text();
    for (const v1::TopLogprobs& step : response.logprobs()) {
      std::vector<TokenLogprob>& entries = top_logprobs.emplace_back();
      for (const v1::TokenLogprob& entry : step.entries()) {
        entries.push_back({static_cast<int32_t>(entry.id()), entry.logprob()});
      }
    }
    if (response.has_final()) final_info = response.final();
    if (!flags.json && !response.text().empty()) {
      std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      std::fflush(stdout);
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    PrintError("Generate", status);
    return 1;
  }
  if (flags.json) {
    std::printf("%s\n", JsonLine(GenerationJson(prompt_ids, token_ids, text, top_logprobs,
                                                FinishName(final_info.finish_reason())))
                            .c_str());
  } else {
    std::printf("\n");
  }
  const v1::Timings& timings = final_info.timings();
  const double decode_seconds = timings.total_seconds() - timings.time_to_first_token_seconds();
  const double rate = decode_seconds > 0 && token_ids.size() > 1
                          ? static_cast<double>(token_ids.size() - 1) / decode_seconds
                          : 0.0;
  std::fprintf(stderr,
               "chord generate: %u prompt tokens, %zu tokens generated, first token after %.3f s (%.1f tok/s), "
               "seed %llu\n",
               final_info.usage().prompt_tokens(), token_ids.size(), timings.time_to_first_token_seconds(), rate,
               static_cast<unsigned long long>(final_info.seed()));
  return 0;
}

}  // namespace chord::cli
