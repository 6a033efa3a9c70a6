// Checks a micro-batch StepHeader (proto/PROTOCOL.md, "Data plane") against
// the stage's plan before anything in it is used: every field comes from
// another process and is untrusted.
//
// Codes, chosen by how the coordinator should react:
//   FAILED_PRECONDITION  the step does not fit this stage's state: another plan
//                        version, no stage loaded, a position that does not
//                        continue what the slot holds (replay the sequence);
//   INVALID_ARGUMENT     the step itself is malformed: sizes, slots, tokens,
//                        sampling parameters, payload length (fail the step).
//   DEADLINE_EXCEEDED    the step arrived after its deadline (replay it).
// The message names the field, the sequence and the values involved.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/wire/wire.h"

namespace chord {

// What a step is checked against.
struct StepLimits {
  uint64_t plan_version = 0;
  bool stage_ready = false;
  bool first_stage = false;  // embeds token ids itself: no payload
  int64_t n_embd = 0;
  int64_t n_vocab = 0;
  int64_t kv_slots = 0;
  int64_t n_ctx = 0;
  int64_t max_step_tokens = wire::kMaxStepTokens;  // bounds the activation buffers a peer can make us allocate
  int64_t max_logprobs = 20;
};

// DEADLINE_EXCEEDED ("step N arrived X ms after its deadline") when the step
// has a deadline (deadline_unix_micros != 0) and `now_unix_micros`, this
// host's system clock (wire::UnixMicrosNow), is past it; OK otherwise.
absl::Status CheckStepDeadline(const wire::pb::StepHeader& step, int64_t now_unix_micros);

// Validates `step` for a stage whose slots currently hold `slot_lengths`
// positions (kv_slots entries). Returns the step's total token count.
absl::StatusOr<int64_t> ValidateStep(const wire::pb::StepHeader& step, const StepLimits& limits,
                                     std::span<const int64_t> slot_lengths);

// Reads the step's activations into `x` (total_tokens rows of n_embd floats):
// a stage after the first needs a payload of exactly that size; the first
// stage must get none (x is left empty). INVALID_ARGUMENT otherwise.
absl::Status ReadStepPayload(const wire::Message& message, const StepLimits& limits,
                             int64_t total_tokens, std::vector<float>* x);

// How many rows a (valid) step samples when they are its last rows, one after
// the other, as a whole-model stage's one-call step can return them
// (StageCompute::Forward): that count; 0 when it samples none; -1 when a row
// it samples has an unsampled row after it.
int64_t TrailingSampledRows(const wire::pb::StepHeader& step);

}  // namespace chord
