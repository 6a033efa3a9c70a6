// The input format of the message target (message_fuzz.cc), shared with the
// program that writes its seed corpus (make_fuzz_data.cc):
//   byte 0: which process receives the messages (Receiver)
//   then up to kMaxRecords records, each one ZeroMQ message as a peer sends it:
//     u8 flags | u16 envelope length | envelope bytes | u16 payload length | payload bytes
//   flags bit 0: a payload frame follows the envelope (its length field is
//   always there); bit 1: an identity frame first, as a ROUTER socket sees it;
//   bit 2: one more empty frame at the end (a malformed message); bits 4-7:
//   which peer sent it (the identity's last byte).
// Lengths are little-endian; a record cut short by the end of the input takes
// what is there.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace chord::fuzz {

enum class Receiver : uint8_t {
  kWorkerData = 0,     // a stage's PULL socket: StepHeader + activations
  kCoordinator = 1,    // the coordinator's control ROUTER: the worker pool
  kLoader = 2,         // the loader's ROUTER: Hello, ModelInfoRequest, TensorRequest
  kLoaderClient = 3,   // a loader client's DEALER: Hello, ModelInfoReply, TensorChunk
  kWorkerControl = 4,  // a worker's DEALER to the coordinator: Hello, RegisterReply, ...
  kCount = 5,
};

inline constexpr int kMaxRecords = 64;

enum RecordFlags : uint8_t {
  kRecordPayload = 1,
  kRecordIdentity = 2,
  kRecordExtraFrame = 4,
};

inline void AppendU16(uint16_t value, std::string* out) {
  out->push_back(static_cast<char>(value & 0xff));
  out->push_back(static_cast<char>(value >> 8));
}

// Appends one record (envelope and payload at most 65,535 bytes each).
inline void AppendRecord(uint8_t flags, std::string_view envelope, std::string_view payload,
                         std::string* out) {
  out->push_back(static_cast<char>(flags));
  AppendU16(static_cast<uint16_t>(envelope.size()), out);
  out->append(envelope);
  AppendU16(static_cast<uint16_t>(payload.size()), out);
  out->append(payload);
}

}  // namespace chord::fuzz
