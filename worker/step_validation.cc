#include "worker/step_validation.h"

#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "common/base/status.h"

namespace chord {
namespace {

namespace pb = wire::pb;

absl::Status ValidateSampling(const pb::SequenceChunk& chunk, const StepLimits& limits) {
  const pb::Sampling& s = chunk.sampling();
  const auto bad = [&](const char* field, double value) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sequence %d: sampling.%s = %g is out of range", chunk.sequence_id(), field, value));
  };
  if (!std::isfinite(s.temperature()) || s.temperature() < 0.0f)
    return bad("temperature", s.temperature());
  if (!std::isfinite(s.top_p()) || s.top_p() < 0.0f || s.top_p() > 1.0f)
    return bad("top_p", s.top_p());
  if (!std::isfinite(s.min_p()) || s.min_p() < 0.0f || s.min_p() > 1.0f)
    return bad("min_p", s.min_p());
  // 0 is proto3's "unset", read as "off" (1).
  if (!std::isfinite(s.repetition_penalty()) || s.repetition_penalty() < 0.0f) {
    return bad("repetition_penalty", s.repetition_penalty());
  }
  if (!std::isfinite(s.presence_penalty())) return bad("presence_penalty", s.presence_penalty());
  if (!std::isfinite(s.frequency_penalty())) return bad("frequency_penalty", s.frequency_penalty());
  if (s.penalty_last_n() < -1) return bad("penalty_last_n", s.penalty_last_n());
  for (const auto& [id, bias] : s.logit_bias()) {
    if (static_cast<int64_t>(id) >= limits.n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("sequence %d: logit_bias token id %d is not below n_vocab %d",
                          chunk.sequence_id(), id, limits.n_vocab));
    }
    // -inf bans a token; NaN or +inf would poison the distribution.
    if (std::isnan(bias) || bias == INFINITY) return bad("logit_bias", bias);
  }
  if (chunk.logprobs() > limits.max_logprobs) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sequence %d: %d logprobs asked for, at most %d", chunk.sequence_id(),
                        chunk.logprobs(), limits.max_logprobs));
  }
  return absl::OkStatus();
}

// `lengths_in_step`: where each slot seen earlier in this step ends.
absl::Status ValidateChunk(const pb::SequenceChunk& chunk, const StepLimits& limits,
                           std::span<const int64_t> slot_lengths,
                           absl::flat_hash_map<uint32_t, int64_t>& lengths_in_step) {
  const uint64_t id = chunk.sequence_id();
  if (chunk.token_pending()) {
    // The stage fills pending tokens in before it validates (a chained step).
    return absl::InvalidArgumentError(
        absl::StrFormat("sequence %d: a pending token outside a chained step", id));
  }
  if (chunk.token_ids().empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("sequence %d: the chunk has no tokens", id));
  }
  if (static_cast<int64_t>(chunk.slot()) >= limits.kv_slots) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sequence %d: slot %d is out of range (kv_slots %d)", id, chunk.slot(), limits.kv_slots));
  }
  const auto earlier = lengths_in_step.find(chunk.slot());
  const bool seen = earlier != lengths_in_step.end();
  const int64_t held = seen ? earlier->second : slot_lengths[chunk.slot()];
  const int64_t first = chunk.first_position();
  // Restarting a slot that an earlier chunk of the same step extends would
  // overwrite cache rows that chunk's attention reads.
  if (first != held && !(first == 0 && !seen)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "sequence %d: first_position %d does not continue slot %d, which holds %d positions", id,
        first, chunk.slot(), held));
  }
  const int64_t end = first + chunk.token_ids_size();
  if (end > limits.n_ctx) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sequence %d: positions [%d, %d) do not fit in n_ctx %d", id, first, end, limits.n_ctx));
  }
  for (uint32_t token : chunk.token_ids()) {
    if (static_cast<int64_t>(token) >= limits.n_vocab) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "sequence %d: token id %d is not below n_vocab %d", id, token, limits.n_vocab));
    }
  }
  RETURN_IF_ERROR(ValidateSampling(chunk, limits));
  lengths_in_step[chunk.slot()] = end;
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckStepDeadline(const pb::StepHeader& step, int64_t now_unix_micros) {
  const int64_t deadline = step.deadline_unix_micros();
  if (deadline == 0 || now_unix_micros <= deadline) return absl::OkStatus();
  // Unsigned: a peer's deadline may be any int64, and the difference must not overflow.
  const uint64_t late_micros =
      static_cast<uint64_t>(now_unix_micros) - static_cast<uint64_t>(deadline);
  return absl::DeadlineExceededError(absl::StrFormat("step %d arrived %d ms after its deadline",
                                                     step.step_id(), late_micros / 1000));
}

absl::StatusOr<int64_t> ValidateStep(const pb::StepHeader& step, const StepLimits& limits,
                                     std::span<const int64_t> slot_lengths) {
  if (!limits.stage_ready) {
    return absl::FailedPreconditionError(
        absl::StrFormat("step %d: this worker holds no ready stage", step.step_id()));
  }
  if (step.plan_version() != limits.plan_version) {
    return absl::FailedPreconditionError(
        absl::StrFormat("step %d is for plan %d, this stage runs plan %d", step.step_id(),
                        step.plan_version(), limits.plan_version));
  }
  CHORD_CHECK(static_cast<int64_t>(slot_lengths.size()) == limits.kv_slots);
  if (static_cast<int64_t>(step.n_embd()) != limits.n_embd) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "step %d: n_embd %d, the model's is %d", step.step_id(), step.n_embd(), limits.n_embd));
  }
  int64_t total = 0;
  absl::flat_hash_map<uint32_t, int64_t> lengths_in_step;
  for (const pb::SequenceChunk& chunk : step.sequences()) {
    RETURN_IF_ERROR(ValidateChunk(chunk, limits, slot_lengths, lengths_in_step));
    total += chunk.token_ids_size();
    if (total > limits.max_step_tokens) {
      return absl::InvalidArgumentError(absl::StrFormat("step %d holds more than %d tokens",
                                                        step.step_id(), limits.max_step_tokens));
    }
  }
  if (total == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("step %d has no tokens", step.step_id()));
  }
  return total;
}

absl::Status ReadStepPayload(const wire::Message& message, const StepLimits& limits,
                             int64_t total_tokens, std::vector<float>* x) {
  if (limits.first_stage) {
    if (message.has_payload) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the first stage embeds token ids itself, but the step carries a %d-byte payload",
          message.payload.size()));
    }
    x->clear();
    return absl::OkStatus();
  }
  const absl::Status status = wire::CopyPayloadFloats(message, static_cast<uint64_t>(total_tokens),
                                                      static_cast<uint64_t>(limits.n_embd), x);
  if (!status.ok()) return absl::InvalidArgumentError(status.message());
  return absl::OkStatus();
}

int64_t TrailingSampledRows(const wire::pb::StepHeader& step) {
  // Each chunk that samples does so at its last row; they must be the step's
  // last rows, one after the other.
  int64_t row = 0, expected = -1, count = 0;
  for (const wire::pb::SequenceChunk& chunk : step.sequences()) {
    row += chunk.token_ids_size();
    if (!chunk.sample()) {
      if (count > 0) return -1;  // a row after the sampled ones
      continue;
    }
    if (count > 0 && row - 1 != expected + 1) return -1;
    expected = row - 1;
    ++count;
  }
  if (count == 0) return 0;
  return expected == row - 1 ? count : -1;  // row: the step's row count
}

}  // namespace chord
