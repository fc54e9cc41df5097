# Declarations for csrc/format.h (the on-disk format, defined once).
from libc.stdint cimport uint8_t, int8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from libcpp.string cimport string
from libcpp.vector cimport vector

cdef extern from "format.h" namespace "tfdump" nogil:
    uint32_t kFormatVersion
    size_t kFileHeaderSize
    size_t kFrameHeaderSize
    uint32_t kMetaShardIndex
    uint32_t kFrameMagic
    uint32_t kTensorListMarker

    cdef enum FrameKind:
        kFrameData
        kFrameMeta
    cdef enum Codec:
        kCodecRaw
        kCodecZstd
    cdef enum Filter:
        kFilterNone
        kFilterShuffle
    cdef enum EntryType:
        kEntryKeyDef
        kEntryBlob
        kEntryTensor
        kEntryMeta
    cdef enum TensorFlag:
        kFlagUninitialized
        kFlagString
        kFlagVariant
        kFlagResource
    cdef enum TensorStorage:
        kStorageBlob
        kStorageInline
        kStorageNone

    cdef cppclass Hash128:
        uint64_t h1
        uint64_t h2

    uint32_t Crc32c(const void* data, size_t size, uint32_t crc)
    Hash128 HashBytes(const void* data, size_t size)
    void Shuffle(const uint8_t* src, size_t size, size_t elem_size, uint8_t* dst)
    void Unshuffle(const uint8_t* src, size_t size, size_t elem_size, uint8_t* dst)

    cdef cppclass FileHeader:
        uint32_t format_version
        uint32_t shard_index
        uint64_t writer_id
        int64_t created_us
        uint32_t pid
    void EncodeFileHeader(const FileHeader& h, uint8_t* out)
    int DecodeFileHeader(const uint8_t* inp, FileHeader* h)

    cdef cppclass FrameHeader:
        uint8_t kind
        uint8_t codec
        int8_t level
        uint32_t table_stored_len
        uint32_t table_raw_len
        uint64_t data_stored_len
        uint64_t data_raw_len
        uint32_t n_entries
        uint32_t table_crc
        uint32_t data_crc
    void EncodeFrameHeader(const FrameHeader& h, uint8_t* out)
    int DecodeFrameHeader(const uint8_t* inp, FrameHeader* h)

    cdef cppclass TableWriter:
        void KeyDef(uint32_t key_id, int32_t output_slot, const string& device, const string& node,
                    const string& debug_op)
        void Tensor(uint32_t run_id, uint64_t seq, int64_t wall_us, uint32_t key_id, int32_t dtype,
                    uint16_t flags, const int64_t* dims, int ndims, const Hash128& payload_hash,
                    uint64_t payload_len, const Hash128* blob_hashes, uint32_t n_blobs)
        void Blob(const Hash128& hash, uint64_t raw_len, uint64_t data_offset, uint8_t filter, uint8_t elem_size)
        void Meta(const string& json, const Hash128* attachments, uint32_t n_attachments)
        vector[uint8_t]& bytes()
        uint32_t n_entries()
        void Clear()

    cdef cppclass KeyDefEntry:
        uint32_t key_id
        int32_t output_slot
        string device
        string node
        string debug_op
    cdef cppclass BlobEntry:
        pass
    cdef cppclass TensorEntry:
        pass
    cdef cppclass MetaEntry:
        string json
        vector[Hash128] attachments
    cdef cppclass ParsedTable:
        vector[KeyDefEntry] key_defs
        vector[BlobEntry] blobs
        vector[TensorEntry] tensors
        vector[int64_t] dims
        vector[Hash128] blob_refs
        vector[MetaEntry] metas
    int ParseTable(const uint8_t* data, size_t size, uint32_t n_entries, ParsedTable* out, string* error)
