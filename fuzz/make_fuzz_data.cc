// Writes the fixed inputs of the fuzz targets, deterministically:
//   data/spm-vocab.gguf   the tokenizer.* metadata of models/stories260K.gguf
//   data/bpe-vocab.gguf   GPT-2's first 1,024 tokens, the merges among them, and
//                         <|endoftext|> (from ../shared/tokenizer/ggml-vocab-gpt-2.gguf)
//   data/tiny-model.gguf  a two-layer Llama (n_embd 8) over the SPM vocabulary
//   corpus/*/seed-*       small valid inputs for each target
// Usage: make_fuzz_data STORIES260K_GGUF GPT2_VOCAB_GGUF (run by hand; README.md).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "chord/internal/v1/internal.pb.h"
#include "common/gguf/gguf_file.h"
#include "common/gguf/gguf_writer.h"
#include "fuzz/message_records.h"

namespace chord::fuzz {
namespace {

namespace pb = ::chord::internal::v1;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "make_fuzz_data: %s\n", what.c_str());
  std::exit(1);
}

void Check(const absl::Status& status) {
  if (!status.ok()) Die(status.ToString());
}

void WriteFile(const std::filesystem::path& path, std::string_view bytes) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) Die("cannot write " + path.string());
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::unique_ptr<gguf::GgufFile> Open(const std::string& path) {
  absl::StatusOr<std::unique_ptr<gguf::GgufFile>> file = gguf::GgufFile::Open(path);
  if (!file.ok()) Die(file.status().ToString());
  return *std::move(file);
}

void WriteHeaderOnly(const gguf::GgufWriter& writer, const std::filesystem::path& path) {
  const std::vector<uint8_t> header = writer.SerializeHeader();
  WriteFile(path, std::string_view(reinterpret_cast<const char*>(header.data()), header.size()));
}

// The SPM vocabulary: every tokenizer.* key of stories260K.
void AddSpmVocab(const gguf::GgufFile& stories, gguf::GgufWriter* writer) {
  for (const auto& [key, value] : stories.metadata()) {
    if (key.starts_with("tokenizer.")) Check(writer->AddValue(key, value));
  }
}

void WriteBpeVocab(const gguf::GgufFile& gpt2, const std::filesystem::path& path) {
  constexpr size_t kTokens = 1024;
  const std::vector<std::string> tokens = *gpt2.GetStringArray("tokenizer.ggml.tokens");
  const std::vector<int64_t> types = *gpt2.GetIntArray("tokenizer.ggml.token_type");
  const std::vector<std::string> merges = *gpt2.GetStringArray("tokenizer.ggml.merges");
  const int64_t eos = *gpt2.GetInt("tokenizer.ggml.eos_token_id");
  std::vector<std::string> kept(tokens.begin(), tokens.begin() + kTokens);
  std::vector<int32_t> kept_types(types.begin(), types.begin() + kTokens);
  kept.push_back(tokens[static_cast<size_t>(eos)]);
  kept_types.push_back(static_cast<int32_t>(types[static_cast<size_t>(eos)]));
  const std::set<std::string> known(kept.begin(), kept.end());
  std::vector<std::string> kept_merges;
  for (const std::string& merge : merges) {
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos) continue;
    const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
    if (known.contains(left) && known.contains(right) && known.contains(left + right)) {
      kept_merges.push_back(merge);
    }
  }
  gguf::GgufWriter writer;
  Check(writer.AddString("tokenizer.ggml.model", *gpt2.GetString("tokenizer.ggml.model")));
  Check(writer.AddString("tokenizer.ggml.pre", *gpt2.GetString("tokenizer.ggml.pre")));
  Check(writer.AddStringArray("tokenizer.ggml.tokens", kept));
  Check(writer.AddInt32Array("tokenizer.ggml.token_type", kept_types));
  Check(writer.AddStringArray("tokenizer.ggml.merges", kept_merges));
  Check(writer.AddUint32("tokenizer.ggml.bos_token_id", kTokens));
  Check(writer.AddUint32("tokenizer.ggml.eos_token_id", kTokens));
  WriteHeaderOnly(writer, path);
}

// A two-layer Llama small enough to commit, with deterministic weights.
void WriteTinyModel(const gguf::GgufFile& stories, const std::string& path) {
  constexpr int64_t kEmbd = 8, kFf = 16, kLayers = 2;
  const int64_t n_vocab = static_cast<int64_t>(stories.GetStringArray("tokenizer.ggml.tokens")->size());
  gguf::GgufWriter writer;
  Check(writer.AddString("general.architecture", "llama"));
  Check(writer.AddString("general.name", "fuzz-tiny"));
  Check(writer.AddUint32("llama.embedding_length", kEmbd));
  Check(writer.AddUint32("llama.block_count", kLayers));
  Check(writer.AddUint32("llama.attention.head_count", 2));
  Check(writer.AddUint32("llama.attention.head_count_kv", 1));
  Check(writer.AddUint32("llama.feed_forward_length", kFf));
  Check(writer.AddUint32("llama.context_length", 64));
  Check(writer.AddFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f));
  AddSpmVocab(stories, &writer);
  const int64_t kv = kEmbd / 2;
  Check(writer.AddTensor("token_embd.weight", DType::kF32, {kEmbd, n_vocab}).status());
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    const std::string blk = "blk." + std::to_string(layer) + ".";
    Check(writer.AddTensor(blk + "attn_norm.weight", DType::kF32, {kEmbd}).status());
    Check(writer.AddTensor(blk + "attn_q.weight", DType::kF32, {kEmbd, kEmbd}).status());
    Check(writer.AddTensor(blk + "attn_k.weight", DType::kF32, {kEmbd, kv}).status());
    Check(writer.AddTensor(blk + "attn_v.weight", DType::kF32, {kEmbd, kv}).status());
    Check(writer.AddTensor(blk + "attn_output.weight", DType::kF32, {kEmbd, kEmbd}).status());
    Check(writer.AddTensor(blk + "ffn_norm.weight", DType::kF32, {kEmbd}).status());
    Check(writer.AddTensor(blk + "ffn_gate.weight", DType::kF16, {kEmbd, kFf}).status());
    Check(writer.AddTensor(blk + "ffn_up.weight", DType::kF16, {kEmbd, kFf}).status());
    Check(writer.AddTensor(blk + "ffn_down.weight", DType::kF16, {kFf, kEmbd}).status());
  }
  Check(writer.AddTensor("output_norm.weight", DType::kF32, {kEmbd}).status());
  Check(writer.Write(path, [](size_t index, std::span<uint8_t> out) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>((index * 31 + i * 7) % 61);
    return absl::OkStatus();
  }, 1));
}

// A file with one value of every type, nested arrays included.
std::string EveryValueType() {
  gguf::GgufWriter writer;
  Check(writer.AddUint8("u8", 1));
  Check(writer.AddInt8("i8", -1));
  Check(writer.AddUint16("u16", 2));
  Check(writer.AddInt16("i16", -2));
  Check(writer.AddUint32("u32", 3));
  Check(writer.AddInt32("i32", -3));
  Check(writer.AddUint64("u64", 4));
  Check(writer.AddInt64("i64", -4));
  Check(writer.AddFloat32("f32", 0.5f));
  Check(writer.AddFloat64("f64", 0.25));
  Check(writer.AddBool("bool", true));
  Check(writer.AddString("string", "text"));
  Check(writer.AddStringArray("strings", {"a", "bc"}));
  Check(writer.AddFloat32Array("floats", {1.0f, 2.0f}));
  Check(writer.AddInt32Array("ints", {1, -1}));
  const std::vector<uint8_t> header = writer.SerializeHeader();
  return std::string(header.begin(), header.end());
}

std::string Serialize(const pb::Envelope& envelope) {
  std::string out;
  if (!envelope.SerializeToString(&out)) Die("cannot serialize");
  return out;
}

pb::Envelope Hello(const std::string& role) {
  pb::Envelope e;
  e.mutable_hello()->set_protocol_version(pb::PROTOCOL_VERSION_CURRENT);
  e.mutable_hello()->set_role(role);
  e.mutable_hello()->set_node_id(role + "-1");
  e.mutable_hello()->set_model_sha256("0123456789abcdef");
  return e;
}

pb::Envelope Step(bool first_stage, uint32_t slot, uint32_t first_position, int tokens) {
  pb::Envelope e;
  pb::StepHeader* step = e.mutable_step();
  step->set_plan_version(1);
  step->set_step_id(7);
  step->set_n_embd(8);
  pb::SequenceChunk* chunk = step->add_sequences();
  chunk->set_sequence_id(3);
  chunk->set_slot(slot);
  chunk->set_first_position(first_position);
  for (int i = 0; i < tokens; ++i) chunk->add_token_ids(static_cast<uint32_t>(10 + i));
  chunk->set_sample(true);
  chunk->mutable_sampling()->set_temperature(first_stage ? 0.0f : 0.8f);
  chunk->mutable_sampling()->set_top_p(0.9f);
  (*chunk->mutable_sampling()->mutable_logit_bias())[5] = -1.0f;
  return e;
}

void WriteMessageSeeds(const gguf::GgufFile& model, const std::filesystem::path& dir) {
  const auto seed = [&](const char* name, Receiver receiver, const std::vector<std::string>& records) {
    std::string bytes(1, static_cast<char>(receiver));
    for (const std::string& record : records) bytes += record;
    WriteFile(dir / name, bytes);
  };
  const auto record = [](uint8_t flags, const pb::Envelope& e, std::string_view payload = {}) {
    std::string out;
    AppendRecord(flags, Serialize(e), payload, &out);
    return out;
  };
  // Worker data plane: a later stage (peer 0: payload of 3 x 8 floats), then
  // the first stage (peer 1: no payload) continuing the slot, then FreeSlots.
  pb::Envelope free_slots;
  free_slots.mutable_free_slots()->add_slots(0);
  free_slots.mutable_free_slots()->add_slots(9);
  seed("seed-worker-data-steps", Receiver::kWorkerData,
       {record(kRecordPayload, Step(false, 0, 0, 3), std::string(3 * 8 * 4, '\0')),
        record(1 << 4, Step(true, 0, 3, 2)), record(0, free_slots)});
  // Coordinator: two workers say Hello and register; the first reports ready.
  pb::Envelope reg_a, reg_b, ready;
  reg_a.mutable_register_worker()->set_worker_id("w0");
  reg_a.mutable_register_worker()->set_weight_bytes_per_second(1e9);
  reg_a.mutable_register_worker()->set_kv_slots(4);
  reg_b.mutable_register_worker()->set_worker_id("w1");
  reg_b.mutable_register_worker()->set_weight_bytes_per_second(2e9);
  ready.mutable_stage_ready()->set_plan_version(1);
  seed("seed-coordinator-register", Receiver::kCoordinator,
       {record(kRecordIdentity, Hello("worker")), record(kRecordIdentity, reg_a),
        record(kRecordIdentity | (1 << 4), Hello("worker")), record(kRecordIdentity | (1 << 4), reg_b),
        record(kRecordIdentity, ready)});
  // Loader: Hello, ModelInfoRequest, a TensorRequest inside token_embd.
  pb::Envelope info_request, tensor_request;
  info_request.mutable_model_info_request();
  tensor_request.mutable_tensor_request()->set_request_id(1);
  tensor_request.mutable_tensor_request()->set_name("token_embd.weight");
  tensor_request.mutable_tensor_request()->set_offset(64);
  tensor_request.mutable_tensor_request()->set_length(256);
  seed("seed-loader-requests", Receiver::kLoader,
       {record(kRecordIdentity, Hello("worker")), record(kRecordIdentity, info_request),
        record(kRecordIdentity, tensor_request)});
  // Loader client: the loader's Hello, its ModelInfoReply for the tiny model
  // (as WeightService::HandleModelInfo builds it), and a TensorChunk.
  pb::Envelope info_reply, chunk;
  pb::ModelInfoReply* info = info_reply.mutable_model_info_reply();
  info->set_model_sha256("0123456789abcdef");
  info->set_file_name("tiny-model.gguf");
  info->set_metadata_gguf(reinterpret_cast<const char*>(model.bytes().data()), model.data_offset());
  for (const gguf::TensorInfo& tensor : model.tensors()) {
    pb::TensorDescriptor* d = info->add_tensors();
    d->set_name(tensor.name);
    d->set_type(static_cast<uint32_t>(tensor.type));
    for (int64_t dim : tensor.dims) d->add_dims(static_cast<uint64_t>(dim));
    d->set_n_bytes(tensor.n_bytes);
  }
  chunk.mutable_tensor_chunk()->set_request_id(1);
  chunk.mutable_tensor_chunk()->set_name("token_embd.weight");
  chunk.mutable_tensor_chunk()->set_length(4);
  seed("seed-loader-client-replies", Receiver::kLoaderClient,
       {record(0, Hello("loader")), record(0, info_reply), record(kRecordPayload, chunk, "abcd")});
  // Worker control: Hello, RegisterReply, AssignLayers, FreeSlots, Shutdown, a Status.
  pb::Envelope reply, assign, shutdown, status;
  reply.mutable_register_reply();
  assign.mutable_assign_layers()->set_plan_version(1);
  assign.mutable_assign_layers()->set_n_stages(1);
  assign.mutable_assign_layers()->set_end_layer(2);
  assign.mutable_assign_layers()->set_kv_type("f16");
  shutdown.mutable_shutdown()->set_reason("drain");
  status.mutable_status()->set_code(14);
  status.mutable_status()->set_message("unavailable");
  seed("seed-worker-control", Receiver::kWorkerControl,
       {record(0, Hello("coordinator")), record(0, reply), record(0, assign), record(0, free_slots),
        record(0, shutdown), record(kRecordExtraFrame, status)});
}

void WriteTokenizerSeeds(const std::filesystem::path& dir) {
  // byte 0: tokenizer (0-1 SPM, 2-8 BPE by pre-tokenizer); byte 1: flags.
  const auto seed = [&](const std::string& name, uint8_t tokenizer, uint8_t flags, std::string text) {
    WriteFile(dir / name, std::string{static_cast<char>(tokenizer), static_cast<char>(flags)} + text);
  };
  seed("seed-spm-story", 0, 0, "Once upon a time, there was a little girl named Lily.");
  seed("seed-spm-no-prefix-special", 1, 3, "<s>Hello</s>  world\n\t\xe2\x96\x81 caf\xc3\xa9");
  seed("seed-bpe-gpt2", 2, 0, "Hello world! It's 2024, isn't it?   Yes.");
  seed("seed-bpe-llama3-digits", 3, 1, "12345 apples\r\n\xf0\x9f\x98\x80 emoji");
  seed("seed-bpe-qwen2-special", 4, 2, "<|endoftext|>x<|endoftext|>");
  seed("seed-bpe-falcon-invalid-utf8", 5, 0, std::string("abc\xff\xfe\xc3 def\x80"));
  seed("seed-bpe-starcoder-code", 6, 4, "for (int i = 0; i < 10; ++i) { x += i; }");
  seed("seed-bpe-deepseek-cjk", 7, 0, "\xe4\xbd\xa0\xe5\xa5\xbd, world");
}

void WriteConfigSeeds(const std::filesystem::path& repo, const std::filesystem::path& dir) {
  for (const char* name : {"single-node.yaml", "three-hosts.yaml"}) {
    WriteFile(dir / (std::string("seed-") + name), ReadFile(repo / "deploy/cluster" / name));
  }
  WriteFile(dir / "seed-byte-size", "2G");
  WriteFile(dir / "seed-coordinator-flags", "--grpc-port\n50051\n--kv-type\nf16\n--min-workers\n2");
}

int Main(int argc, char** argv) {
  if (argc != 3) Die("usage: make_fuzz_data STORIES260K_GGUF GPT2_VOCAB_GGUF");
  const std::filesystem::path data = CHORD_FUZZ_DATA_DIR;
  const std::filesystem::path corpus = CHORD_FUZZ_CORPUS_DIR;
  const std::filesystem::path repo = data.parent_path().parent_path();
  const std::unique_ptr<gguf::GgufFile> stories = Open(argv[1]);
  gguf::GgufWriter spm;
  AddSpmVocab(*stories, &spm);
  WriteHeaderOnly(spm, data / "spm-vocab.gguf");
  WriteBpeVocab(*Open(argv[2]), data / "bpe-vocab.gguf");
  WriteTinyModel(*stories, (data / "tiny-model.gguf").string());
  const std::unique_ptr<gguf::GgufFile> model = Open((data / "tiny-model.gguf").string());

  WriteFile(corpus / "gguf/seed-tiny-model.gguf", ReadFile(data / "tiny-model.gguf"));
  WriteFile(corpus / "gguf/seed-every-value-type.gguf", EveryValueType());
  WriteMessageSeeds(*model, corpus / "message");
  WriteTokenizerSeeds(corpus / "tokenizer");
  WriteConfigSeeds(repo, corpus / "config");
  return 0;
}

}  // namespace
}  // namespace chord::fuzz

int main(int argc, char** argv) { return chord::fuzz::Main(argc, argv); }
