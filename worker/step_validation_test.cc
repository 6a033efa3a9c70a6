#include "worker/step_validation.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chord {
namespace {

namespace pb = wire::pb;
using ::testing::HasSubstr;

class StepValidationTest : public ::testing::Test {
 protected:
  StepValidationTest() {
    limits_.plan_version = 7;
    limits_.stage_ready = true;
    limits_.first_stage = true;
    limits_.n_embd = 8;
    limits_.n_vocab = 100;
    limits_.kv_slots = 4;
    limits_.n_ctx = 32;
    lengths_ = {0, 5, 0, 31};
    step_.set_plan_version(7);
    step_.set_step_id(42);
    step_.set_n_embd(8);
    AddChunk(1, 5, {3, 4, 5});
    AddChunk(0, 0, {1, 2});
  }

  pb::SequenceChunk* AddChunk(uint32_t slot, uint32_t first, std::vector<uint32_t> tokens) {
    pb::SequenceChunk* chunk = step_.add_sequences();
    chunk->set_sequence_id(100 + step_.sequences_size());
    chunk->set_slot(slot);
    chunk->set_first_position(first);
    for (uint32_t t : tokens) chunk->add_token_ids(t);
    chunk->set_sample(true);
    chunk->mutable_sampling()->set_temperature(0.8f);
    chunk->mutable_sampling()->set_top_p(0.95f);
    return chunk;
  }

  void ExpectRejected(absl::StatusCode code, const std::string& words) {
    const absl::StatusOr<int64_t> total = ValidateStep(step_, limits_, lengths_);
    ASSERT_FALSE(total.ok());
    EXPECT_EQ(total.status().code(), code) << total.status();
    EXPECT_THAT(total.status().message(), HasSubstr(words));
  }

  StepLimits limits_;
  std::vector<int64_t> lengths_;
  pb::StepHeader step_;
};

TEST_F(StepValidationTest, AcceptsAValidStepAndCountsItsTokens) {
  const absl::StatusOr<int64_t> total = ValidateStep(step_, limits_, lengths_);
  ASSERT_TRUE(total.ok()) << total.status();
  EXPECT_EQ(*total, 5);
}

TEST_F(StepValidationTest, ALateStepIsDeadlineExceededNamingHowLate) {
  constexpr int64_t kNow = 1'700'000'000'000'000;
  EXPECT_TRUE(CheckStepDeadline(step_, kNow).ok());  // 0: no deadline
  step_.set_deadline_unix_micros(kNow + 1);
  EXPECT_TRUE(CheckStepDeadline(step_, kNow).ok());
  step_.set_deadline_unix_micros(kNow);
  EXPECT_TRUE(CheckStepDeadline(step_, kNow).ok());
  step_.set_deadline_unix_micros(kNow - 1'234'567);
  const absl::Status late = CheckStepDeadline(step_, kNow);
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;
  EXPECT_EQ(late.message(), "step 42 arrived 1234 ms after its deadline");
  // Any int64 a peer sends is handled without overflow.
  step_.set_deadline_unix_micros(std::numeric_limits<int64_t>::min());
  EXPECT_THAT(CheckStepDeadline(step_, kNow).message(), HasSubstr("after its deadline"));
  step_.set_deadline_unix_micros(std::numeric_limits<int64_t>::max());
  EXPECT_TRUE(CheckStepDeadline(step_, kNow).ok());
}

TEST_F(StepValidationTest, RejectsAStageThatIsNotReady) {
  limits_.stage_ready = false;
  ExpectRejected(absl::StatusCode::kFailedPrecondition, "holds no ready stage");
}

TEST_F(StepValidationTest, RejectsAnotherPlanVersion) {
  step_.set_plan_version(6);
  ExpectRejected(absl::StatusCode::kFailedPrecondition,
                 "step 42 is for plan 6, this stage runs plan 7");
}

TEST_F(StepValidationTest, RejectsAnotherEmbeddingWidth) {
  step_.set_n_embd(16);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "n_embd 16, the model's is 8");
}

TEST_F(StepValidationTest, RejectsASlotOutOfRange) {
  step_.mutable_sequences(1)->set_slot(4);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "slot 4 is out of range (kv_slots 4)");
}

TEST_F(StepValidationTest, RejectsAPositionGap) {
  step_.mutable_sequences(0)->set_first_position(6);
  ExpectRejected(absl::StatusCode::kFailedPrecondition,
                 "first_position 6 does not continue slot 1, which holds 5 positions");
}

TEST_F(StepValidationTest, AcceptsARestartAtPositionZero) {
  step_.mutable_sequences(0)->set_first_position(0);
  EXPECT_TRUE(ValidateStep(step_, limits_, lengths_).ok());
}

TEST_F(StepValidationTest, ChunksOfOneSlotInAStepMustFollowEachOther) {
  AddChunk(1, 8, {9});
  EXPECT_TRUE(ValidateStep(step_, limits_, lengths_).ok());
  step_.mutable_sequences(2)->set_first_position(5);
  ExpectRejected(absl::StatusCode::kFailedPrecondition,
                 "does not continue slot 1, which holds 8 positions");
  step_.mutable_sequences(2)->set_first_position(0);  // restart after a chunk of the same step
  ExpectRejected(absl::StatusCode::kFailedPrecondition,
                 "first_position 0 does not continue slot 1");
}

TEST_F(StepValidationTest, RejectsPositionsBeyondTheContext) {
  AddChunk(3, 31, {1, 2});
  ExpectRejected(absl::StatusCode::kInvalidArgument, "positions [31, 33) do not fit in n_ctx 32");
}

TEST_F(StepValidationTest, RejectsATokenOutsideTheVocabulary) {
  step_.mutable_sequences(1)->set_token_ids(1, 100);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "token id 100 is not below n_vocab 100");
}

TEST_F(StepValidationTest, RejectsAnEmptyChunkAndAnEmptyStep) {
  AddChunk(2, 0, {});
  ExpectRejected(absl::StatusCode::kInvalidArgument, "the chunk has no tokens");
  step_.clear_sequences();
  ExpectRejected(absl::StatusCode::kInvalidArgument, "step 42 has no tokens");
}

TEST_F(StepValidationTest, RejectsTooManyTokens) {
  limits_.max_step_tokens = 4;
  ExpectRejected(absl::StatusCode::kInvalidArgument, "step 42 holds more than 4 tokens");
}

TEST_F(StepValidationTest, RejectsBadSamplingParameters) {
  pb::Sampling* sampling = step_.mutable_sequences(0)->mutable_sampling();
  sampling->set_temperature(-1.0f);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "sampling.temperature = -1 is out of range");
  sampling->set_temperature(NAN);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "sampling.temperature");
  sampling->set_temperature(1.0f);
  sampling->set_top_p(1.5f);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "sampling.top_p = 1.5");
  sampling->set_top_p(1.0f);
  sampling->set_repetition_penalty(-2.0f);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "sampling.repetition_penalty = -2");
  sampling->set_repetition_penalty(1.1f);
  sampling->set_penalty_last_n(-2);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "sampling.penalty_last_n = -2");
  sampling->set_penalty_last_n(-1);
  (*sampling->mutable_logit_bias())[100] = 1.0f;
  ExpectRejected(absl::StatusCode::kInvalidArgument,
                 "logit_bias token id 100 is not below n_vocab 100");
  sampling->mutable_logit_bias()->clear();
  (*sampling->mutable_logit_bias())[7] = NAN;
  ExpectRejected(absl::StatusCode::kInvalidArgument, "sampling.logit_bias");
  (*sampling->mutable_logit_bias())[7] = -INFINITY;  // bans token 7: allowed
  EXPECT_TRUE(ValidateStep(step_, limits_, lengths_).ok());
  step_.mutable_sequences(0)->set_logprobs(21);
  ExpectRejected(absl::StatusCode::kInvalidArgument, "21 logprobs asked for, at most 20");
}

wire::Message WithPayload(size_t n_floats) {
  wire::Message message;
  std::vector<float> values(n_floats);
  for (size_t i = 0; i < n_floats; ++i) values[i] = 0.25f * static_cast<float>(i) - 3.0f;
  message.payload = zmq::message_t(values.data(), values.size() * sizeof(float));
  message.has_payload = true;
  return message;
}

TEST_F(StepValidationTest, TheFirstStageTakesNoPayload) {
  std::vector<float> x = {1.0f};
  EXPECT_TRUE(ReadStepPayload(wire::Message{}, limits_, 5, &x).ok());
  EXPECT_TRUE(x.empty());
  const absl::Status status = ReadStepPayload(WithPayload(40), limits_, 5, &x);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("carries a 160-byte payload"));
}

TEST_F(StepValidationTest, LaterStagesNeedExactlyTheActivations) {
  limits_.first_stage = false;
  std::vector<float> x;
  ASSERT_TRUE(ReadStepPayload(WithPayload(40), limits_, 5, &x).ok());
  ASSERT_EQ(x.size(), 40u);
  EXPECT_EQ(x[0], -3.0f);
  EXPECT_EQ(x[39], 0.25f * 39 - 3.0f);
  for (size_t wrong : {0, 39, 41}) {
    const absl::Status status =
        ReadStepPayload(wrong == 0 ? wire::Message{} : WithPayload(wrong), limits_, 5, &x);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << wrong;
    EXPECT_THAT(status.message(), HasSubstr("the header says 5 x 8 floats (160 bytes)"));
  }
}

TEST_F(StepValidationTest, CountsTheSampledRowsWhenTheyEndTheStep) {
  // SetUp: chunks of 3 and 2 tokens, both sampling: rows 2 and 4, not adjacent.
  EXPECT_EQ(TrailingSampledRows(step_), -1);
  step_.mutable_sequences(0)->set_sample(false);  // prefill chunk that does not sample
  EXPECT_EQ(TrailingSampledRows(step_), 1);
  AddChunk(2, 0, {7});  // one more sampling row: rows 4 (slot 0) and 5 (slot 2)
  EXPECT_EQ(TrailingSampledRows(step_), 2);
  AddChunk(3, 0, {8})->set_sample(false);  // an unsampled row after them
  EXPECT_EQ(TrailingSampledRows(step_), -1);
  for (int i = 0; i < step_.sequences_size(); ++i) step_.mutable_sequences(i)->set_sample(false);
  EXPECT_EQ(TrailingSampledRows(step_), 0);
  // One-token chunks that all sample (batched decode): every row.
  pb::StepHeader decode;
  for (uint32_t slot = 0; slot < 3; ++slot) {
    pb::SequenceChunk* chunk = decode.add_sequences();
    chunk->set_slot(slot);
    chunk->add_token_ids(slot + 1);
    chunk->set_sample(true);
  }
  EXPECT_EQ(TrailingSampledRows(decode), 3);
}

}  // namespace
}  // namespace chord
