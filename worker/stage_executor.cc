#include "worker/stage_executor.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/base/status.h"
#include "common/quant/quant.h"
#include "kernels/cpu/matmul.h"

namespace chord {
namespace {

namespace pb = wire::pb;

}  // namespace

SamplingParams ToSamplingParams(const pb::Sampling& sampling) {
  SamplingParams params;
  params.temperature = sampling.temperature();
  params.top_k = sampling.top_k();
  params.top_p = sampling.top_p();
  params.min_p = sampling.min_p();
  params.repetition_penalty =
      sampling.repetition_penalty() == 0.0f ? 1.0f : sampling.repetition_penalty();
  params.presence_penalty = sampling.presence_penalty();
  params.frequency_penalty = sampling.frequency_penalty();
  params.penalty_last_n = sampling.penalty_last_n();
  params.seed = sampling.seed();
  params.logit_bias.clear();
  for (const auto& [id, bias] : sampling.logit_bias()) {
    params.logit_bias.emplace_back(static_cast<int32_t>(id), bias);
  }
  // Map order is unspecified; the sum per token does not depend on it, but keep it stable.
  std::sort(params.logit_bias.begin(), params.logit_bias.end());
  return params;
}

absl::StatusOr<double> MeasureWeightThroughput(ThreadPool& pool) {
  constexpr int64_t kCols = 2048;
  constexpr int64_t kRows = 2048;  // 2048 x 2176 bytes: about 4.25 MiB of Q8_0
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(kRows * kCols));
  for (float& v : values) v = uniform(rng);
  ASSIGN_OR_RETURN(const uint64_t row_bytes, RowBytes(DType::kQ8_0, kCols));
  std::vector<uint8_t> weights(static_cast<size_t>(row_bytes * kRows));
  RETURN_IF_ERROR(quant::QuantizeRows(DType::kQ8_0, values.data(), kRows, kCols, weights.data()));
  const kernels::WeightMatrix w{DType::kQ8_0, kRows, kCols, row_bytes, weights.data()};
  std::vector<float> x(values.begin(), values.begin() + kCols);
  std::vector<float> y(static_cast<size_t>(kRows));
  kernels::MatMul matmul(pool);
  double best = 0.0;
  for (int i = 0; i < 3; ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(matmul.Run(w, x.data(), 1, y.data()));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (seconds > 0.0) best = std::max(best, static_cast<double>(weights.size()) / seconds);
  }
  return best;
}

absl::StatusOr<std::unique_ptr<StageExecutor>> StageExecutor::Create(const ModelConfig& config,
                                                                     const StagePlan& plan,
                                                                     StageWeights weights,
                                                                     ThreadPool& pool) {
  if (plan.kv_slots <= 0 || plan.n_ctx <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a stage needs kv_slots > 0 and n_ctx > 0, the plan has %d and %d",
                        plan.kv_slots, plan.n_ctx));
  }
  StageComputeOptions options;
  options.range = plan.range;
  options.kv.n_slots = plan.kv_slots;
  options.kv.n_ctx = plan.n_ctx;
  options.kv.n_embd_kv = config.n_embd_kv();
  options.kv.type = plan.kv_type;
  options.kv.kv_tokens = plan.kv_tokens;
  options.kv.page_size = plan.kv_page_size;
  options.device = plan.device;
  options.exact = plan.exact;
  if (weights.tensors == nullptr) return absl::InvalidArgumentError("a stage needs its tensors");
  std::unique_ptr<StageExecutor> executor(new StageExecutor(config, plan));
  if (plan.backend == "cuda") {
    DeviceStreamedLayers streamed;
    if (weights.device_streamed_first >= 0) {
      streamed = {weights.device_streamed(), weights.device_streamed_first,
                  weights.device_buffer_bytes};
    } else if (weights.layers != nullptr) {
      return absl::UnimplementedError(
          "the cuda backend streams layers only beyond a GPU memory budget (--gpu-memory-budget); "
          "give the memory budget room for the whole range, or set a GPU budget");
    }
    ASSIGN_OR_RETURN(executor->compute_,
                     MakeCudaStageCompute(*weights.tensors, config, options, streamed));
    // What stays on the GPU was copied there: the host copy is not needed.
    weights.tensors.reset();
  } else if (plan.backend == "cpu") {
    ASSIGN_OR_RETURN(executor->compute_, MakeCpuStageCompute(*weights.tensors, config, options,
                                                             pool, weights.layers.get()));
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown backend '", plan.backend, "'"));
  }
  executor->weights_ = std::move(weights);
  executor->pool_ = &pool;
  executor->samplers_.resize(static_cast<size_t>(pool.size()));
  executor->lengths_.assign(static_cast<size_t>(plan.kv_slots), 0);
  executor->owners_.assign(static_cast<size_t>(plan.kv_slots), 0);
  if (executor->is_last()) executor->histories_.resize(static_cast<size_t>(plan.kv_slots));
  return executor;
}

StepLimits StageExecutor::Limits() const {
  StepLimits limits;
  limits.plan_version = plan_.plan_version;
  limits.stage_ready = true;
  limits.first_stage = compute_->has_embedding();
  limits.n_embd = config_.n_embd;
  limits.n_vocab = config_.n_vocab;
  limits.kv_slots = plan_.kv_slots;
  limits.n_ctx = plan_.n_ctx;
  return limits;
}

absl::Status StageExecutor::Run(const wire::Message& message, std::vector<float>* activations,
                                pb::StepResult* result) {
  const pb::StepHeader& step = message.envelope.step();
  const StepLimits limits = Limits();
  rows_on_device_ = false;
  bool rows_received = false;
  if (step.activations_over_nccl()) RETURN_IF_ERROR(ReceiveRows(message, &rows_received));
  ASSIGN_OR_RETURN(const int64_t total, ValidateStep(step, limits, lengths_));
  if (!rows_received) RETURN_IF_ERROR(ReadStepPayload(message, limits, total, activations));
  marks_ = {};
  marks_.rows_in = std::chrono::steady_clock::now();
  // Only a valid step's releases count, and only those naming the sequence
  // (a chunk restarting a released slot is valid before and after).
  const pb::FreeSlots& released = step.released();
  if (released.sequence_ids_size() == released.slots_size()) {
    FreeSlots(
        std::span<const uint32_t>(released.slots().data(), released.slots_size()),
        std::span<const uint64_t>(released.sequence_ids().data(), released.sequence_ids_size()));
  }
  RETURN_IF_ERROR(ReservePages(step));
  batch_.clear();
  token_ids_.clear();
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    for (int i = 0; i < chunk.token_ids_size(); ++i) {
      batch_.push_back({chunk.slot(), static_cast<int64_t>(chunk.first_position()) + i});
      token_ids_.push_back(static_cast<int32_t>(chunk.token_ids(i)));
    }
  }
  const bool send_rows = SendsOverLink(link_.get(), total, link_min_rows_);
  const int64_t trailing = TrailingSampledRows(step);
  const bool whole_step = limits.first_stage && is_last() && !rows_received && !send_rows &&
                          compute_->can_forward() && trailing >= 0;
  // The last of several GPU stages: its output rows stay on the GPU for the
  // logits instead of a round trip through host memory.
  const bool logits_on_device =
      !limits.first_stage && is_last() && compute_->can_link() && trailing >= 0;
  if (whole_step) {
    // Token ids in, logits out: the rows never leave the stage.
    RETURN_IF_ERROR(compute_->Forward(token_ids_, batch_, trailing,
                                      PrepareLogits(step, static_cast<size_t>(trailing))));
  } else if (logits_on_device) {
    // Without sampled rows the output comes to the host (which also waits for
    // the layers); with them, LogitsOfDeviceRows reads it on the GPU.
    if (trailing == 0) activations->resize(static_cast<size_t>(total * config_.n_embd));
    RETURN_IF_ERROR(compute_->RunLayersOnDevice(batch_, activations->data(), rows_received,
                                                /*output_on_device=*/trailing > 0));
    if (trailing > 0) {
      RETURN_IF_ERROR(compute_->LogitsOfDeviceRows(
          total - trailing, trailing, PrepareLogits(step, static_cast<size_t>(trailing))));
    }
  } else if (limits.first_stage && send_rows) {
    // A first GPU stage linked to the next: token ids in, rows out over the
    // link, nothing through host memory.
    RETURN_IF_ERROR(compute_->EmbedOnDevice(token_ids_));
    RETURN_IF_ERROR(compute_->RunLayersOnDevice(batch_, activations->data(),
                                                /*input_on_device=*/true,
                                                /*output_on_device=*/true));
    rows_on_device_ = true;
    device_rows_ = total;
  } else if (limits.first_stage && compute_->can_link()) {
    // A first GPU stage whose rows go on through host memory: the embedding
    // stays on the GPU for the layers (one copy out and one wait, not three).
    activations->resize(static_cast<size_t>(total * config_.n_embd));
    RETURN_IF_ERROR(compute_->EmbedOnDevice(token_ids_));
    RETURN_IF_ERROR(compute_->RunLayersOnDevice(batch_, activations->data(),
                                                /*input_on_device=*/true,
                                                /*output_on_device=*/false));
  } else {
    if (limits.first_stage) {
      activations->resize(static_cast<size_t>(total * config_.n_embd));
      RETURN_IF_ERROR(compute_->Embed(token_ids_, activations->data()));
    }
    if (rows_received || send_rows) {
      activations->resize(static_cast<size_t>(total * config_.n_embd));
      RETURN_IF_ERROR(
          compute_->RunLayersOnDevice(batch_, activations->data(), rows_received, send_rows));
      rows_on_device_ = send_rows;
      device_rows_ = total;
    } else {
      RETURN_IF_ERROR(compute_->RunLayers(batch_, activations->data()));
    }
  }
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    lengths_[chunk.slot()] = static_cast<int64_t>(chunk.first_position()) + chunk.token_ids_size();
    if (chunk.first_position() == 0) owners_[chunk.slot()] = chunk.sequence_id();
  }
  marks_.computed = std::chrono::steady_clock::now();
  result->set_plan_version(plan_.plan_version);
  result->set_step_id(step.step_id());
  if (!is_last()) return absl::OkStatus();
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    std::vector<int32_t>& history = histories_[chunk.slot()];
    if (chunk.first_position() == 0) history.clear();
    for (uint32_t token : chunk.token_ids()) history.push_back(static_cast<int32_t>(token));
  }
  const absl::Status sampled = whole_step || logits_on_device
                                   ? SampleLogits(static_cast<size_t>(trailing), result)
                                   : Sample(step, *activations, result);
  marks_.sampled = std::chrono::steady_clock::now();
  return sampled;
}

absl::Status StageExecutor::ReceiveRows(const wire::Message& message, bool* received) {
  const pb::StepHeader& step = message.envelope.step();
  if (message.has_payload) {
    return absl::InvalidArgumentError("a step announced over NCCL carries a payload frame too");
  }
  // The transfer belongs to the sender's plan: another plan's went over
  // another communicator, which is gone.
  if (step.plan_version() != plan_.plan_version) {
    return absl::FailedPreconditionError(
        absl::StrFormat("step %d of plan %d is stale (this stage runs plan %d)", step.step_id(),
                        step.plan_version(), plan_.plan_version));
  }
  if (link_ == nullptr || !link_->has_previous() || link_->broken()) {
    return absl::UnavailableError(
        "the previous stage sent activations over NCCL, but this stage has no working link");
  }
  int64_t rows = 0;
  for (const pb::SequenceChunk& chunk : step.sequences()) rows += chunk.token_ids_size();
  // Bounded before any allocation: no valid step has more rows than the KV
  // cache has positions (the sender validated the same step).
  if (rows <= 0 || rows > plan_.kv_slots * plan_.n_ctx) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a step of %d rows announced over NCCL cannot be valid", rows));
  }
  RETURN_IF_ERROR(compute_->ReceiveRows(*link_, rows));
  *received = true;
  return absl::OkStatus();
}

absl::Status StageExecutor::SendRows() {
  if (!rows_on_device_ || link_ == nullptr) {
    return absl::InternalError("SendRows without rows left on the device for a link");
  }
  rows_on_device_ = false;
  return compute_->SendRows(*link_, device_rows_);
}

absl::Status StageExecutor::ReservePages(const pb::StepHeader& step) {
  // One extent per slot: where its last chunk ends, and whether its first
  // chunk starts a new sequence (ValidateStep made the chunks contiguous).
  extents_.clear();
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    const auto slot = static_cast<int64_t>(chunk.slot());
    const int64_t end = static_cast<int64_t>(chunk.first_position()) + chunk.token_ids_size();
    auto it = std::find_if(extents_.begin(), extents_.end(),
                           [&](const SlotExtent& e) { return e.slot == slot; });
    if (it == extents_.end()) {
      extents_.push_back({slot, chunk.first_position() == 0, end});
    } else {
      it->end = end;
    }
  }
  return compute_->Reserve(extents_);
}

absl::Status StageExecutor::Sample(const pb::StepHeader& step, const std::vector<float>& x,
                                   pb::StepResult* result) {
  const auto n_embd = static_cast<size_t>(config_.n_embd);
  rows_.clear();
  size_t row = 0;
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    row += static_cast<size_t>(chunk.token_ids_size());
    if (chunk.sample())
      rows_.insert(rows_.end(), x.begin() + (row - 1) * n_embd, x.begin() + row * n_embd);
  }
  const size_t n_sample = rows_.size() / n_embd;
  if (n_sample == 0) return absl::OkStatus();
  RETURN_IF_ERROR(compute_->Logits(rows_.data(), static_cast<int64_t>(n_sample),
                                   PrepareLogits(step, n_sample)));
  return SampleLogits(n_sample, result);
}

LogitsRequest StageExecutor::PrepareLogits(const pb::StepHeader& step, size_t n_sample) {
  sampled_.clear();
  params_.clear();
  full_.clear();
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    if (!chunk.sample()) continue;
    sampled_.push_back(&chunk);
    params_.push_back(ToSamplingParams(chunk.sampling()));
    // A greedy choice from the raw logits needs only the stage's greedy token.
    full_.push_back(Sampler::PicksGreedyToken(params_.back()) && chunk.logprobs() == 0 ? 0 : 1);
  }
  greedy_.resize(n_sample);
  return LogitsRequest{logits_.Reserve(n_sample * static_cast<size_t>(config_.n_vocab)), full_,
                       greedy_};
}

absl::Status StageExecutor::SampleLogits(size_t n_sample, pb::StepResult* result) {
  if (n_sample == 0) return absl::OkStatus();
  const auto n_vocab = static_cast<size_t>(config_.n_vocab);
  if (sampled_.size() != n_sample) {
    return absl::InternalError("the step's sampled rows and its logits disagree");
  }
  // Each sequence samples on its own (a pure function of its logits, settings
  // and history), so the step's sequences spread over the pool's threads; a
  // greedy one takes the token the stage picked from its logits.
  tokens_.resize(n_sample);
  // Rows that sample on the host; the others take the stage's greedy token
  // here (waking the pool's threads for those alone cost 0.4-0.6 ms a step
  // of 64-128 greedy rows on a 32-core host).
  host_rows_.clear();
  for (size_t j = 0; j < n_sample; ++j) {
    if (full_[j] == 0) {
      tokens_[j] = greedy_[j];
    } else {
      host_rows_.push_back(j);
    }
  }
  pool_->ParallelFor(static_cast<int64_t>(host_rows_.size()), 1, [&](int64_t begin, int64_t end) {
    Sampler& sampler = samplers_[static_cast<size_t>(ThreadPool::ThreadIndex())];
    for (auto i = static_cast<size_t>(begin); i < static_cast<size_t>(end); ++i) {
      const size_t j = host_rows_[i];
      const pb::SequenceChunk& chunk = *sampled_[j];
      const std::span<const float> logits(logits_.data() + j * n_vocab, n_vocab);
      const int64_t position =
          static_cast<int64_t>(chunk.first_position()) + chunk.token_ids_size();
      tokens_[j] = sampler.Sample(logits, params_[j], histories_[chunk.slot()], position);
    }
  });
  for (size_t j = 0; j < n_sample; ++j) {
    const pb::SequenceChunk& chunk = *sampled_[j];
    pb::SampledToken* token = result->add_tokens();
    token->set_sequence_id(chunk.sequence_id());
    token->set_token_id(static_cast<uint32_t>(tokens_[j]));
    if (chunk.logprobs() == 0) continue;
    const std::span<const float> logits(logits_.data() + j * n_vocab, n_vocab);
    for (const TokenLogprob& top :
         Sampler::TopLogprobs(logits, static_cast<int>(chunk.logprobs()))) {
      pb::TokenLogprob* out = token->add_top_logprobs();
      out->set_id(static_cast<uint32_t>(top.id));
      out->set_logprob(top.logprob);
    }
  }
  return absl::OkStatus();
}

void StageExecutor::FreeSlots(std::span<const uint32_t> slots,
                              std::span<const uint64_t> sequence_ids) {
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint32_t slot = slots[i];
    if (slot >= lengths_.size()) continue;
    // A newer sequence already started in the slot (its first step overtook
    // this message on the data path): its state stays.
    if (i < sequence_ids.size() && owners_[slot] != sequence_ids[i]) continue;
    lengths_[slot] = 0;
    compute_->Release(slot);
    if (!histories_.empty()) histories_[slot].clear();
  }
}

}  // namespace chord
