#include "format.h"

#include <cstring>

#include "status.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace tfdump {
namespace {

// ---- CRC-32C ---------------------------------------------------------------

struct Crc32cTable {
  uint32_t t[8][256];
  Crc32cTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const Crc32cTable& Table() {
  static const Crc32cTable table;
  return table;
}

uint32_t Crc32cSoftware(const uint8_t* p, size_t n, uint32_t crc) {
  const auto& t = Table().t;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= crc;
    crc = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^ t[4][(v >> 24) & 0xFF] ^
          t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^ t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}
bool HaveSse42() {
  static const bool have = __builtin_cpu_supports("sse4.2");
  return have;
}
#endif

// ---- Little-endian loads and stores, hash128's finalizer ---------------------

// MurmurHash3's fmix64: hash128 uses it to finish both halves.
inline uint64_t Fmix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

inline void Store32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void Store64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint32_t Load32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t Load64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

}  // namespace

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  if (HaveSse42()) return ~Crc32cHardware(p, size, crc);
#endif
  return ~Crc32cSoftware(p, size, crc);
}

// hash128 (docs/FORMAT.md): four 64-bit lanes, each folding 16 input bytes
// per step through a 64x64->128-bit multiply (the product's halves xor-ed),
// 64 bytes per round. About 4x the speed of MurmurHash3 here, which matters:
// every payload is hashed for deduplication on the writer threads.
namespace {
constexpr uint64_t kHashK[8] = {0x9E3779B97F4A7C15ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull,
                                0xD6E8FEB86659FD93ull, 0xA0761D6478BD642Full, 0xE7037ED1A0B428DBull,
                                0x8EBC6AF09C88C6E3ull, 0x589965CC75374CC3ull};
inline uint64_t Mum(uint64_t a, uint64_t b) {
  const unsigned __int128 r = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(r) ^ static_cast<uint64_t>(r >> 64);
}
inline void HashRound(const uint8_t* p, uint64_t s[4]) {
  for (int i = 0; i < 4; ++i) s[i] = Mum(Load64(p + 16 * i) ^ kHashK[i], Load64(p + 16 * i + 8) ^ s[i]);
}
}  // namespace

Hash128 HashBytes(const void* data, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t s[4] = {kHashK[4] ^ len, kHashK[5], kHashK[6], kHashK[7] ^ (len * kHashK[0])};
  size_t n = len;
  while (n >= 64) {
    HashRound(p, s);
    p += 64;
    n -= 64;
  }
  // The tail (0..63 bytes) is zero-padded to a full round; its length is
  // already mixed in through the seeds.
  uint8_t tail[64] = {0};
  if (n > 0) std::memcpy(tail, p, n);
  HashRound(tail, s);
  uint64_t h1 = Mum(s[0] ^ kHashK[1], s[1] ^ kHashK[2]) ^ Mum(s[2] ^ kHashK[3], s[3] ^ len);
  uint64_t h2 = Mum(s[1] ^ kHashK[5], s[2] ^ kHashK[6]) ^ Mum(s[3] ^ kHashK[7], s[0] ^ kHashK[4]);
  return Hash128{Fmix(h1 ^ (h2 >> 29)), Fmix(h2 ^ h1)};
}

void Shuffle(const uint8_t* src, size_t size, size_t es, uint8_t* dst) {
  if (es <= 1) { std::memcpy(dst, src, size); return; }
  const size_t n = size / es;
  if (es == 4) {
    uint8_t *d0 = dst, *d1 = dst + n, *d2 = dst + 2 * n, *d3 = dst + 3 * n;
    for (size_t i = 0; i < n; ++i) {
      d0[i] = src[4 * i]; d1[i] = src[4 * i + 1]; d2[i] = src[4 * i + 2]; d3[i] = src[4 * i + 3];
    }
  } else {
    for (size_t i = 0; i < n; ++i)
      for (size_t k = 0; k < es; ++k) dst[k * n + i] = src[i * es + k];
  }
  std::memcpy(dst + n * es, src + n * es, size - n * es);
}

void Unshuffle(const uint8_t* src, size_t size, size_t es, uint8_t* dst) {
  if (es <= 1) { std::memcpy(dst, src, size); return; }
  const size_t n = size / es;
  if (es == 4) {
    const uint8_t *s0 = src, *s1 = src + n, *s2 = src + 2 * n, *s3 = src + 3 * n;
    for (size_t i = 0; i < n; ++i) {
      dst[4 * i] = s0[i]; dst[4 * i + 1] = s1[i]; dst[4 * i + 2] = s2[i]; dst[4 * i + 3] = s3[i];
    }
  } else {
    for (size_t i = 0; i < n; ++i)
      for (size_t k = 0; k < es; ++k) dst[i * es + k] = src[k * n + i];
  }
  std::memcpy(dst + n * es, src + n * es, size - n * es);
}

void EncodeFileHeader(const FileHeader& h, uint8_t out[kFileHeaderSize]) {
  std::memset(out, 0, kFileHeaderSize);
  std::memcpy(out, kFileMagic, 8);
  Store32(out + 8, h.format_version);
  Store32(out + 12, h.shard_index);
  Store64(out + 16, h.writer_id);
  Store64(out + 24, static_cast<uint64_t>(h.created_us));
  Store32(out + 32, h.pid);
  Store32(out + 44, Crc32c(out, 44));
}

int DecodeFileHeader(const uint8_t in[kFileHeaderSize], FileHeader* h) {
  if (std::memcmp(in, kFileMagic, 8) != 0) return kCorrupt;
  if (Load32(in + 44) != Crc32c(in, 44)) return kCorrupt;
  h->format_version = Load32(in + 8);
  h->shard_index = Load32(in + 12);
  h->writer_id = Load64(in + 16);
  h->created_us = static_cast<int64_t>(Load64(in + 24));
  h->pid = Load32(in + 32);
  if (h->format_version > kFormatVersion) return kBadVersion;
  return kOk;
}

void EncodeFrameHeader(const FrameHeader& h, uint8_t out[kFrameHeaderSize]) {
  std::memset(out, 0, kFrameHeaderSize);
  Store32(out, kFrameMagic);
  out[4] = h.kind;
  out[5] = h.codec;
  out[6] = static_cast<uint8_t>(h.level);
  Store32(out + 8, h.table_stored_len);
  Store32(out + 12, h.table_raw_len);
  Store64(out + 16, h.data_stored_len);
  Store64(out + 24, h.data_raw_len);
  Store32(out + 32, h.n_entries);
  Store32(out + 36, h.table_crc);
  Store32(out + 40, h.data_crc);
  Store32(out + 44, Crc32c(out, 44));
}

int DecodeFrameHeader(const uint8_t in[kFrameHeaderSize], FrameHeader* h) {
  if (Load32(in) != kFrameMagic) return kCorrupt;
  if (Load32(in + 44) != Crc32c(in, 44)) return kCorrupt;
  h->kind = in[4];
  h->codec = in[5];
  h->level = static_cast<int8_t>(in[6]);
  h->table_stored_len = Load32(in + 8);
  h->table_raw_len = Load32(in + 12);
  h->data_stored_len = Load64(in + 16);
  h->data_raw_len = Load64(in + 24);
  h->n_entries = Load32(in + 32);
  h->table_crc = Load32(in + 36);
  h->data_crc = Load32(in + 40);
  return kOk;
}

void TableWriter::PutRaw(const void* p, size_t n) {
  const size_t at = buf_.size();
  buf_.resize(at + n);
  std::memcpy(buf_.data() + at, p, n);
}

void TableWriter::PutStr(const std::string& s) {
  Put(static_cast<uint32_t>(s.size()));
  PutRaw(s.data(), s.size());
}

void TableWriter::KeyDef(uint32_t key_id, int32_t output_slot, const std::string& device,
                         const std::string& node, const std::string& debug_op) {
  PutU8(kEntryKeyDef);
  Put(key_id);
  Put(output_slot);
  PutStr(device);
  PutStr(node);
  PutStr(debug_op);
  ++n_entries_;
}

void TableWriter::Blob(const Hash128& hash, uint64_t raw_len, uint64_t data_offset, uint8_t filter,
                       uint8_t elem_size) {
  PutU8(kEntryBlob);
  PutHash(hash);
  Put(raw_len);
  Put(data_offset);
  PutU8(filter);
  PutU8(elem_size);
  ++n_entries_;
}

void TableWriter::Tensor(uint32_t run_id, uint64_t seq, int64_t wall_us, uint32_t key_id, int32_t dtype,
                         uint16_t flags, const int64_t* dims, int ndims, const Hash128& payload_hash,
                         uint64_t payload_len, const Hash128* blob_hashes, uint32_t n_blobs) {
  PutU8(kEntryTensor);
  Put(run_id);
  Put(seq);
  Put(wall_us);
  Put(key_id);
  Put(dtype);
  Put(flags);
  PutU8(static_cast<uint8_t>(ndims));
  PutRaw(dims, sizeof(int64_t) * ndims);
  PutHash(payload_hash);
  Put(payload_len);
  Put(n_blobs);
  for (uint32_t i = 0; i < n_blobs; ++i) PutHash(blob_hashes[i]);
  ++n_entries_;
}

void TableWriter::Meta(const std::string& json, const Hash128* attachments, uint32_t n_attachments) {
  PutU8(kEntryMeta);
  PutStr(json);
  Put(n_attachments);
  for (uint32_t i = 0; i < n_attachments; ++i) PutHash(attachments[i]);
  ++n_entries_;
}

namespace {

class TableParser {
 public:
  TableParser(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  bool ok() const { return ok_; }
  bool done() const { return p_ == end_; }
  template <typename T> T Get() {
    T v{};
    if (static_cast<size_t>(end_ - p_) < sizeof(T)) { ok_ = false; return v; }
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  Hash128 GetHash() { Hash128 h; h.h1 = Get<uint64_t>(); h.h2 = Get<uint64_t>(); return h; }
  std::string GetStr() {
    uint32_t n = Get<uint32_t>();
    if (!ok_ || static_cast<size_t>(end_ - p_) < n) { ok_ = false; return {}; }
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  size_t remaining() const { return end_ - p_; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  bool ok_ = true;
};

}  // namespace

int ParseTable(const uint8_t* data, size_t size, uint32_t n_entries, ParsedTable* out, std::string* error) {
  TableParser in(data, size);
  for (uint32_t i = 0; i < n_entries; ++i) {
    const uint8_t type = in.Get<uint8_t>();
    switch (type) {
      case kEntryKeyDef: {
        KeyDefEntry k;
        k.key_id = in.Get<uint32_t>();
        k.output_slot = in.Get<int32_t>();
        k.device = in.GetStr();
        k.node = in.GetStr();
        k.debug_op = in.GetStr();
        out->key_defs.push_back(std::move(k));
        break;
      }
      case kEntryBlob: {
        BlobEntry b;
        b.hash = in.GetHash();
        b.raw_len = in.Get<uint64_t>();
        b.data_offset = in.Get<uint64_t>();
        b.filter = in.Get<uint8_t>();
        b.elem_size = in.Get<uint8_t>();
        out->blobs.push_back(b);
        break;
      }
      case kEntryTensor: {
        TensorEntry t;
        t.run_id = in.Get<uint32_t>();
        t.seq = in.Get<uint64_t>();
        t.wall_us = in.Get<int64_t>();
        t.key_id = in.Get<uint32_t>();
        t.dtype = in.Get<int32_t>();
        t.flags = in.Get<uint16_t>();
        t.ndims = in.Get<uint8_t>();
        t.dims_offset = static_cast<uint32_t>(out->dims.size());
        for (int d = 0; d < t.ndims; ++d) out->dims.push_back(in.Get<int64_t>());
        t.payload_hash = in.GetHash();
        t.payload_len = in.Get<uint64_t>();
        t.n_blobs = in.Get<uint32_t>();
        t.blobs_offset = static_cast<uint32_t>(out->blob_refs.size());
        if (!in.ok() || t.n_blobs > in.remaining() / 16) {
          *error = "record table entry " + std::to_string(i) + " lists more blobs than the table holds";
          return kCorrupt;
        }
        for (uint32_t b = 0; b < t.n_blobs; ++b) out->blob_refs.push_back(in.GetHash());
        out->tensors.push_back(t);
        break;
      }
      case kEntryMeta: {
        MetaEntry m;
        m.json = in.GetStr();
        uint32_t n = in.Get<uint32_t>();
        if (!in.ok() || n > in.remaining() / 16) {
          *error = "META entry " + std::to_string(i) + " lists more attachments than the table holds";
          return kCorrupt;
        }
        for (uint32_t a = 0; a < n; ++a) m.attachments.push_back(in.GetHash());
        out->metas.push_back(std::move(m));
        break;
      }
      default:
        *error = "unknown record table entry type " + std::to_string(type) + " at entry " + std::to_string(i);
        return kCorrupt;
    }
    if (!in.ok()) {
      *error = "record table ends inside entry " + std::to_string(i);
      return kCorrupt;
    }
  }
  if (!in.done()) {
    *error = "record table has " + std::to_string(in.remaining()) + " bytes after its last entry";
    return kCorrupt;
  }
  return kOk;
}

}  // namespace tfdump
