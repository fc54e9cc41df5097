// The on-disk format of tfdump-fast (docs/FORMAT.md), defined once: the
// writer (engine.cc) encodes with these functions and the reader
// (tfdump_fast._native -> reader.py) decodes with them.
#ifndef TFDUMP_FORMAT_H_
#define TFDUMP_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tfdump {

constexpr uint32_t kFormatVersion = 1;
constexpr char kFileMagic[8] = {'T', 'F', 'D', 'S', 'H', 'A', 'R', 'D'};
constexpr uint32_t kFrameMagic = 0x46444654u;  // "TFDF" little-endian
constexpr size_t kFileHeaderSize = 48;
constexpr size_t kFrameHeaderSize = 48;
constexpr uint32_t kMetaShardIndex = 0xFFFFFFFFu;

enum FrameKind : uint8_t { kFrameData = 1, kFrameMeta = 2 };
enum Codec : uint8_t { kCodecRaw = 0, kCodecZstd = 1 };
enum EntryType : uint8_t { kEntryKeyDef = 1, kEntryBlob = 2, kEntryTensor = 3, kEntryMeta = 4 };
enum Filter : uint8_t { kFilterNone = 0, kFilterShuffle = 1 };

// Variant structure and TensorList list blobs (FORMAT.md, "Variant
// payloads"): how one element tensor's bytes are stored, and the n_tensors
// value that says "the tensors are in list blob blob_index".
enum TensorStorage : uint8_t { kStorageBlob = 0, kStorageInline = 1, kStorageNone = 2 };
constexpr uint32_t kTensorListMarker = 0xFFFFFFFFu;

struct Hash128 {
  uint64_t h1, h2;  // trivial type: it sits inside packed table structs
  bool operator==(const Hash128& o) const { return h1 == o.h1 && h2 == o.h2; }
  bool is_zero() const { return h1 == 0 && h2 == 0; }
};
struct Hash128Hasher {
  size_t operator()(const Hash128& h) const { return static_cast<size_t>(h.h1 ^ (h.h2 * 0x9E3779B97F4A7C15ull)); }
};

// CRC-32C (Castagnoli). Uses SSE4.2 when the CPU has it.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);
// MurmurHash3 x64 128-bit, seed 0.
Hash128 HashBytes(const void* data, size_t size);

// Byte shuffle: lane k of every element goes to block k. A tail of
// size % elem_size bytes is copied unchanged.
void Shuffle(const uint8_t* src, size_t size, size_t elem_size, uint8_t* dst);
void Unshuffle(const uint8_t* src, size_t size, size_t elem_size, uint8_t* dst);

struct FileHeader {
  uint32_t format_version = kFormatVersion;
  uint32_t shard_index = 0;
  uint64_t writer_id = 0;
  int64_t created_us = 0;
  uint32_t pid = 0;
};
void EncodeFileHeader(const FileHeader& h, uint8_t out[kFileHeaderSize]);
// Returns a StatusCode (kOk, kCorrupt for bad magic/crc, kBadVersion).
int DecodeFileHeader(const uint8_t in[kFileHeaderSize], FileHeader* h);

struct FrameHeader {
  uint8_t kind = kFrameData;
  uint8_t codec = kCodecRaw;
  int8_t level = 0;
  uint32_t table_stored_len = 0;
  uint32_t table_raw_len = 0;
  uint64_t data_stored_len = 0;
  uint64_t data_raw_len = 0;
  uint32_t n_entries = 0;
  uint32_t table_crc = 0;
  uint32_t data_crc = 0;
};
void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderSize]);
int DecodeFrameHeader(const uint8_t in[kFrameHeaderSize], FrameHeader* h);

// Appends record-table entries (raw, before compression).
class TableWriter {
 public:
  void KeyDef(uint32_t key_id, int32_t output_slot, const std::string& device, const std::string& node,
              const std::string& debug_op);
  void Blob(const Hash128& hash, uint64_t raw_len, uint64_t data_offset, uint8_t filter, uint8_t elem_size);
  void Tensor(uint32_t run_id, uint64_t seq, int64_t wall_us, uint32_t key_id, int32_t dtype, uint16_t flags,
              const int64_t* dims, int ndims, const Hash128& payload_hash, uint64_t payload_len,
              const Hash128* blob_hashes, uint32_t n_blobs);
  void Meta(const std::string& json, const Hash128* attachments, uint32_t n_attachments);

  std::vector<uint8_t>& bytes() { return buf_; }
  uint32_t n_entries() const { return n_entries_; }
  void Clear() { buf_.clear(); n_entries_ = 0; }

 private:
  void PutU8(uint8_t v) { buf_.push_back(v); }
  void PutRaw(const void* p, size_t n);
  template <typename T> void Put(T v) { PutRaw(&v, sizeof(T)); }
  void PutStr(const std::string& s);
  void PutHash(const Hash128& h) { Put(h.h1); Put(h.h2); }
  std::vector<uint8_t> buf_;
  uint32_t n_entries_ = 0;
};

// The decoded record table in columnar form (for the reader).
struct KeyDefEntry {
  uint32_t key_id;
  int32_t output_slot;
  std::string device, node, debug_op;
};
struct BlobEntry {  // packed: matches the reader's numpy dtype
  Hash128 hash;
  uint64_t raw_len;
  uint64_t data_offset;
  uint8_t filter;
  uint8_t elem_size;
} __attribute__((packed));
struct TensorEntry {  // packed: matches the reader's numpy dtype
  uint32_t run_id;
  uint64_t seq;
  int64_t wall_us;
  uint32_t key_id;
  int32_t dtype;
  uint16_t flags;
  uint8_t ndims;
  uint32_t dims_offset;
  Hash128 payload_hash;
  uint64_t payload_len;
  uint32_t blobs_offset;
  uint32_t n_blobs;
} __attribute__((packed));
struct MetaEntry {
  std::string json;
  std::vector<Hash128> attachments;
};
struct ParsedTable {
  std::vector<KeyDefEntry> key_defs;
  std::vector<BlobEntry> blobs;
  std::vector<TensorEntry> tensors;
  std::vector<int64_t> dims;
  std::vector<Hash128> blob_refs;
  std::vector<MetaEntry> metas;
};
// Returns kOk or kCorrupt (with a message in *error).
int ParseTable(const uint8_t* data, size_t size, uint32_t n_entries, ParsedTable* out, std::string* error);

}  // namespace tfdump

#endif  // TFDUMP_FORMAT_H_
