// One pipeline stage of a plan: the LlamaStage over the weights it was given,
// its KV cache, and what the stage knows of each slot (positions held; on the
// last stage, the token history the sampler's penalties read). Runs one
// micro-batch step at a time: validate, embed (first stage), run the layers,
// and on the last stage sample one token per chunk that asks for it.
//
// Thread-safety: one thread drives an executor (the worker's control loop);
// the layers (and the last stage's sampling) parallelize on the ThreadPool,
// which must outlive the executor.
// Errors: a rejected step (see step_validation.h) leaves every slot as it was.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/generation/sampling_params.h"
#include "common/model/model_config.h"
#include "common/wire/wire.h"
#include "kernels/cpu/thread_pool.h"
#include "worker/host_logits.h"
#include "worker/kv_cache.h"
#include "worker/models/llama.h"
#include "worker/models/tensor_source.h"
#include "worker/nccl_link.h"
#include "worker/sampler.h"
#include "worker/shard/stage_weights.h"
#include "worker/stage_compute.h"
#include "worker/step_validation.h"

namespace chord {

struct StagePlan {
  uint64_t plan_version = 0;
  LayerRange range;
  int64_t kv_slots = 0;
  int64_t n_ctx = 0;
  DType kv_type = DType::kF32;
  int64_t kv_tokens = 0;  // the KV pool's positions; 0: kv_slots x n_ctx
  int64_t kv_page_size = kDefaultKvPageSize;
  std::string backend = "cpu";  // "cpu" or "cuda" (this worker's, not the coordinator's)
  int device = 0;
  bool exact = false;  // results independent of batching (see StageComputeOptions)
};

// The proto's sampling parameters as the Sampler takes them. A
// repetition_penalty of 0 (proto3's unset) means off.
SamplingParams ToSamplingParams(const wire::pb::Sampling& sampling);

// Matrix-vector throughput of this machine's CPU kernels in weight bytes per
// second (best of 3 products over a random ~4 MiB Q8_0 matrix): what the
// coordinator balances layer ranges by.
absl::StatusOr<double> MeasureWeightThroughput(ThreadPool& pool);

class StageExecutor {
 public:
  // Builds the stage over `weights` (kept alive here) on the plan's backend
  // and allocates the KV cache. INVALID_ARGUMENT for a bad plan; UNIMPLEMENTED
  // for a CUDA stage whose range streams or a build without CUDA.
  static absl::StatusOr<std::unique_ptr<StageExecutor>> Create(const ModelConfig& config,
                                                               const StagePlan& plan,
                                                               StageWeights weights,
                                                               ThreadPool& pool);

  // Validates and runs the step in `message` (once valid, first freeing the
  // slots it lists as released). On success `activations` holds
  // the residual stream to forward to the next stage (unless
  // rows_on_device(): then SendRows forwards it) and, on the last stage,
  // `result` gets one SampledToken per chunk with sample = true. A step whose
  // activations come over the NCCL link is received first, even when it is
  // then refused, so that the link's transfers stay matched.
  absl::Status Run(const wire::Message& message, std::vector<float>* activations,
                   wire::pb::StepResult* result);

  // When the phases of the last Run ended: its input rows were in (from the
  // message; over the link, their receive queued), the compute returned (on a GPU stage that
  // hands its rows on over the link, once the work is queued, not done), the
  // tokens were sampled (last stage). For the worker's step timing lines.
  struct StepMarks {
    std::chrono::steady_clock::time_point rows_in, computed, sampled;
  };
  const StepMarks& last_marks() const { return marks_; }

  // The NCCL link of this stage's plan (worker/nccl_link.h), if it has one;
  // the executor sends steps of at least `min_rows` rows over it while it is
  // not broken (smaller ones ride the ZeroMQ message), and takes whatever a
  // step's header announces on it.
  void set_link(std::unique_ptr<NcclLink> link, int64_t min_rows = 1) {
    link_ = std::move(link);
    link_min_rows_ = min_rows;
  }
  NcclLink* link() const { return link_.get(); }
  // The last step's output stayed in GPU memory for the next stage's link.
  bool rows_on_device() const { return rows_on_device_; }
  // Sends the last step's output rows over the link (rows_on_device()).
  absl::Status SendRows();

  // Forgets these slots (out-of-range ids are ignored). When `sequence_ids`
  // is given (parallel to `slots`), a slot is forgotten only if that sequence
  // is the one that last started in it.
  void FreeSlots(std::span<const uint32_t> slots, std::span<const uint64_t> sequence_ids = {});

  // See LlamaStage::set_between_layers.
  void set_between_layers(std::function<void()> hook) {
    compute_->set_between_layers(std::move(hook));
  }

  const StagePlan& plan() const { return plan_; }
  const ModelConfig& config() const { return config_; }
  bool is_last() const { return compute_->has_output(); }
  uint64_t weight_bytes() const { return weights_.bytes; }
  // Null when every layer is resident.
  const ShardCache* shard_cache() const { return weights_.layers.get(); }
  uint64_t kv_cache_bytes() const { return compute_->kv_cache_bytes(); }
  double kv_cache_usage() const { return compute_->kv_cache_usage(); }
  int64_t slot_length(int64_t slot) const { return lengths_[static_cast<size_t>(slot)]; }

 private:
  StageExecutor(const ModelConfig& config, const StagePlan& plan)
      : config_(config),
        plan_(plan),
        logits_(plan.backend == "cuda" ? CudaMemoryPinner() : nullptr) {}
  StepLimits Limits() const;
  // Takes the KV pages the step's chunks need: RESOURCE_EXHAUSTED, with no
  // change, when the pool cannot hold them.
  absl::Status ReservePages(const wire::pb::StepHeader& step);
  // Takes the rows a step announces over the NCCL link (see Run).
  absl::Status ReceiveRows(const wire::Message& message, bool* received);
  // What the stage hands back of the logits of a step's n_sample sampled rows
  // (sampled_, params_ and full_ are set here, in chunk order).
  LogitsRequest PrepareLogits(const wire::pb::StepHeader& step, size_t n_sample);
  // Samples the step's sequences from logits_ (n_sample rows, in chunk order),
  // or takes greedy_ where full_ is 0.
  absl::Status SampleLogits(size_t n_sample, wire::pb::StepResult* result);
  absl::Status Sample(const wire::pb::StepHeader& step, const std::vector<float>& x,
                      wire::pb::StepResult* result);

  ModelConfig config_;
  StagePlan plan_;
  StageWeights weights_;
  // Before compute_: a GPU stage that receives over the link waits through
  // it (StageCompute::ReceiveRows), so the link outlives the compute.
  std::unique_ptr<NcclLink> link_;
  std::unique_ptr<StageCompute> compute_;
  int64_t link_min_rows_ = 1;
  bool rows_on_device_ = false;
  int64_t device_rows_ = 0;  // of the last step
  StepMarks marks_;
  ThreadPool* pool_ = nullptr;
  std::vector<Sampler> samplers_;  // one per pool thread
  std::vector<const wire::pb::SequenceChunk*> sampled_;
  std::vector<SamplingParams> params_;  // of sampled_
  std::vector<uint8_t> full_;           // of sampled_: 1 where the host samples from logits_
  std::vector<int32_t> greedy_;         // of sampled_: the stage's greedy token
  std::vector<int32_t> tokens_;
  std::vector<size_t> host_rows_;                // of sampled_: where full_ is 1
  std::vector<int64_t> lengths_;                 // positions each slot holds
  std::vector<uint64_t> owners_;                 // the sequence that last started in each slot
  std::vector<std::vector<int32_t>> histories_;  // last stage only
  std::vector<BatchToken> batch_;
  std::vector<SlotExtent> extents_;
  std::vector<int32_t> token_ids_;
  std::vector<float> rows_;
  HostLogits logits_;  // page-locked on a GPU stage
};

}  // namespace chord
