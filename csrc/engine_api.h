/* The C ABI between the capture engine (built into tfdump_fast._native, no
 * TensorFlow) and the TensorFlow bridge (libtfdump_tf_bridge.so, compiled
 * against the TensorFlow that runs). Only plain C types cross it, so the two
 * libraries may be built by different compilers / C++ ABIs.
 *
 * Threading: every function may be called concurrently from any thread,
 * including TensorFlow executor threads. None of them touches Python.
 */
#ifndef TFDUMP_ENGINE_API_H_
#define TFDUMP_ENGINE_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TFDUMP_ENGINE_API_VERSION 2

/* Submit return codes. */
#define TFDUMP_SUBMIT_OK 0
#define TFDUMP_SUBMIT_DROPPED 1      /* drop policy, disk budget, or closed */
#define TFDUMP_SUBMIT_BAD_RUN 2      /* run id is not open */

/* Keeps a payload's memory alive until the engine has written it. */
typedef void (*tfdump_release_fn)(void* owner);

/* Given to a deferred encoder on a writer worker thread. */
typedef struct tfdump_encode_sink tfdump_encode_sink;
struct tfdump_encode_sink {
  void* impl;
  /* Appends bytes to the record's main payload (copied). */
  void (*append)(tfdump_encode_sink* sink, const void* data, size_t size);
  /* Attaches a payload stored as a deduplicated blob; returns its index in
   * the record's blob list. `data` must stay valid until the encoder's owner
   * is released (it normally points into tensors the owner keeps alive). */
  uint32_t (*add_blob)(tfdump_encode_sink* sink, const void* data, size_t size,
                       uint32_t elem_size);
  /* Writes the format's 16-byte content hash of (data, size) to out,
   * remembered by address for the current frame (cheap when repeated). */
  void (*hash)(tfdump_encode_sink* sink, const void* data, size_t size, uint8_t out[16]);
  /* Different for every frame. Encoders may cache things keyed on addresses
   * of data their owners keep alive, but only while frame_id is unchanged:
   * owners are released when the frame is written. Memory handed to
   * add_blob from such a cache must stay valid until the encoder's thread
   * sees the next frame_id. */
  uint64_t frame_id;
};

/* Encoder return codes. */
#define TFDUMP_ENCODE_OK 0
#define TFDUMP_ENCODE_FAILED 1
/* The record is left out on purpose (a healthy summary under
 * mute_if_healthy, which TF's kernel would not publish either): nothing is
 * written, and it is reported as a late drop with reason "muted" (a `drops`
 * event), so the run's counts still add up and no loss is claimed. */
#define TFDUMP_ENCODE_MUTED 2

/* Runs on a writer worker thread, never on a TF thread. Returns
 * TFDUMP_ENCODE_OK on success, TFDUMP_ENCODE_MUTED (see above), anything
 * else marks the record as failed to encode (it is dropped and counted). */
typedef int (*tfdump_encode_fn)(void* owner, tfdump_encode_sink* sink);

typedef struct tfdump_tensor_in {
  uint32_t run_id;
  uint32_t key_id;
  int32_t dtype;       /* TF DataType enum */
  uint32_t flags;      /* TENSOR entry flags: tfdump::kFlag* of format.h */
  int32_t ndims;
  const int64_t* dims;
  uint32_t elem_size;  /* bytes per element for the shuffle filter; 0 = none */
  /* Payload: either bytes (data, size) or a deferred encoder. */
  const void* data;
  size_t size;
  tfdump_encode_fn encode;   /* non-NULL: payload produced on the worker */
  /* Owner of `data` (or of the encoder's input). NULL owner: the engine
   * copies `data` before returning. Non-NULL: the engine keeps `owner` and
   * calls `release(owner)` exactly once when done with it (also on drop). */
  void* owner;
  tfdump_release_fn release;
  /* Bytes this record holds in memory, charged to the queue budget
   * (defaults to `size` when 0). */
  uint64_t charge_bytes;
  /* Arrival time in µs since the epoch; 0 = now (the normal case). Importers
   * of old dumps pass the original time. */
  int64_t wall_us;
} tfdump_tensor_in;

typedef struct tfdump_engine_api {
  int api_version;      /* TFDUMP_ENGINE_API_VERSION */
  void* engine;         /* opaque */
  /* Interns (device, node, slot, debug_op) to a stable key id. */
  uint32_t (*intern_key)(void* engine, const char* device, size_t device_len,
                         const char* node, size_t node_len, int32_t slot,
                         const char* debug_op, size_t debug_op_len);
  /* Hands one tensor to the engine. Blocks only under the `block`
   * backpressure policy while the queue is over its byte budget. Never
   * throws. Size threshold under which the engine copies payloads: */
  int (*submit)(void* engine, const tfdump_tensor_in* in);
  uint64_t zero_copy_threshold;
} tfdump_engine_api;

#ifdef __cplusplus
}
#endif

#endif /* TFDUMP_ENGINE_API_H_ */
