// The on-disk format of tfdump-fast (docs/FORMAT.md), defined once: every
// constant and layout. The engine (engine*.cc) encodes record tables with
// these functions, the TF bridge (csrc/bridge/) lays out variant structures
// and list blobs with the header-only appenders below, and the reader
// (tfdump_fast._native -> reader.py) decodes with them.
#ifndef TFDUMP_FORMAT_H_
#define TFDUMP_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
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

// TENSOR entry flags (also tfdump_tensor_in.flags in engine_api.h).
enum TensorFlag : uint16_t {
  kFlagUninitialized = 1,  // the tensor was not initialized: no payload
  kFlagString = 2,         // payload is a string encoding
  kFlagVariant = 4,        // payload is a variant structure
  kFlagResource = 8,       // payload is a string encoding of ResourceHandleProtos
};

struct Hash128 {
  uint64_t h1, h2;  // trivial type: it sits inside packed table structs
  bool operator==(const Hash128& o) const { return h1 == o.h1 && h2 == o.h2; }
};
struct Hash128Hasher {
  size_t operator()(const Hash128& h) const { return static_cast<size_t>(h.h1 ^ (h.h2 * 0x9E3779B97F4A7C15ull)); }
};

// CRC-32C (Castagnoli). Uses SSE4.2 when the CPU has it.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);
// hash128 of docs/FORMAT.md: the format's own 128-bit content hash (four
// lanes of 64x64->128-bit multiply-xor over 64-byte rounds, MurmurHash3's
// fmix64 finalizer). Not a standard hash; tests/test_format.py holds a plain
// Python reference and golden values.
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

// ---- Payload encodings (FORMAT.md, "String encoding", "Variant structure")
//
// Header-only: the TF bridge (csrc/bridge/), which links nothing of this
// library, lays out its payloads with these appenders. All little-endian
// (x86-64 and aarch64 are; FORMAT.md fixes it).

// How one element tensor's bytes are stored in a tensor_desc, and the
// n_tensors value that says "the tensors are in list blob blob_index".
enum TensorStorage : uint8_t { kStorageBlob = 0, kStorageInline = 1, kStorageNone = 2 };
constexpr uint32_t kTensorListMarker = 0xFFFFFFFFu;

template <typename T>
inline void AppendLE(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// String encoding: u64 n, u64 lengths[n], the bytes concatenated. `out`
// provides Append(const void*, size_t); size_of(i) and data_of(i) describe
// element i.
template <typename Out, typename SizeFn, typename DataFn>
inline void AppendStringEncoding(Out* out, uint64_t n, SizeFn size_of, DataFn data_of) {
  out->Append(&n, 8);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t len = size_of(i);
    out->Append(&len, 8);
  }
  for (uint64_t i = 0; i < n; ++i) out->Append(data_of(i), size_of(i));
}
// Size of the string encoding of n elements of `bytes` bytes in all.
inline uint64_t StringEncodingSize(uint64_t n, uint64_t bytes) { return 8 + 8 * n + bytes; }

// Variant structure: u64 n_elements, then per element its head (str
// type_name, str metadata, u32 n_tensors) and n_tensors tensor_descs.
inline void AppendVariantCount(std::string* out, uint64_t n_elements) { AppendLE<uint64_t>(out, n_elements); }
inline void AppendVariantElementHead(std::string* out, const std::string& type_name, const std::string& metadata,
                                     uint32_t n_tensors) {
  AppendLE<uint32_t>(out, static_cast<uint32_t>(type_name.size()));
  out->append(type_name);
  AppendLE<uint32_t>(out, static_cast<uint32_t>(metadata.size()));
  out->append(metadata);
  AppendLE<uint32_t>(out, n_tensors);
}
// A TensorList element whose tensors are in the record's blob `blob_index`,
// a list blob.
inline void AppendTensorListElement(std::string* out, const std::string& type_name, const std::string& metadata,
                                    uint32_t blob_index) {
  AppendVariantElementHead(out, type_name, metadata, kTensorListMarker);
  AppendLE<uint32_t>(out, blob_index);
}

// tensor_desc (in variant structures and list blobs) up to its storage:
// i32 dtype, u16 flags, u8 ndims, i64 dims[ndims]; dim(i) gives dimension i.
template <typename DimFn>
inline void AppendTensorDescHead(std::string* out, int32_t dtype, uint16_t flags, int ndims, DimFn dim) {
  AppendLE<int32_t>(out, dtype);
  AppendLE<uint16_t>(out, flags);
  AppendLE<uint8_t>(out, static_cast<uint8_t>(ndims));
  for (int i = 0; i < ndims; ++i) AppendLE<int64_t>(out, dim(i));
}
// The storage of a variant structure's tensor_desc: the record's blob
// `blob_index`, inline bytes, or no payload.
inline void AppendStorageBlob(std::string* out, uint32_t blob_index) {
  AppendLE<uint8_t>(out, kStorageBlob);
  AppendLE<uint32_t>(out, blob_index);
}
inline void AppendStorageInline(std::string* out, const std::string& bytes) {
  AppendLE<uint8_t>(out, kStorageInline);
  AppendLE<uint64_t>(out, bytes.size());
  out->append(bytes);
}
inline void AppendStorageNone(std::string* out) { AppendLE<uint8_t>(out, kStorageNone); }

// List blob: u32 n_tensors, then n_tensors tensor_descs whose storage is a
// BLOB of the writer named by hash (or none). The count comes first but is
// known last when a blob is derived from another, so it can be set later.
inline void AppendListBlobCount(std::string* blob, uint32_t n_tensors) { AppendLE<uint32_t>(blob, n_tensors); }
inline void SetListBlobCount(std::string* blob, uint32_t n_tensors) {
  std::memcpy(&(*blob)[0], &n_tensors, sizeof(n_tensors));
}
inline void AppendListBlobStorage(std::string* blob, const uint8_t payload_hash[16], uint64_t payload_len) {
  AppendLE<uint8_t>(blob, kStorageBlob);
  blob->append(reinterpret_cast<const char*>(payload_hash), 16);
  AppendLE<uint64_t>(blob, payload_len);
}

}  // namespace tfdump

#endif  // TFDUMP_FORMAT_H_
