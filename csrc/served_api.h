/* The C ABI of served capture in libtfdump_tf_bridge.so (csrc/bridge/served.cc):
 * the TfdumpIdentity debug op's state in a process that called
 * tfdump_fast.serve(), and the master step ids a client's local partitions
 * saw. Plain C types only; obtained with tfdump_served_get_api().
 */
#ifndef TFDUMP_SERVED_API_H_
#define TFDUMP_SERVED_API_H_

#include <stddef.h>
#include <stdint.h>

#include "engine_api.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TFDUMP_SERVED_API_VERSION 1

typedef struct tfdump_served_stats {
  uint64_t tensors_submitted;  /* handed to the served engine */
  uint64_t tensors_no_run;     /* no pre-opened run was free: not captured */
  uint64_t tensors_failed;     /* could not be captured */
  uint64_t steps_bound;        /* master steps bound to a run */
} tfdump_served_stats;

typedef struct tfdump_served_api {
  int api_version; /* TFDUMP_SERVED_API_VERSION */
  /* Binds served capture to an engine and registers the served callback key
   * (so probes report this process as served). 0, or -1 if already bound. */
  int (*start)(const tfdump_engine_api* engine);
  /* Hands pre-opened engine run ids to the pool; a master step seen for the
   * first time takes one. */
  void (*add_runs)(const uint32_t* run_ids, int n);
  /* Removes steps whose last tensor is older than idle_us (all when
   * idle_us < 0) and that no TF thread is submitting to; writes up to cap
   * (step id, run id) pairs. Returns how many. */
  int (*take_idle)(int64_t idle_us, int64_t* step_ids, uint32_t* run_ids, int cap);
  /* Removes and writes up to cap unused pool runs. Returns how many. */
  int (*take_unused)(uint32_t* run_ids, int cap);
  /* Unbinds the engine after every submitting thread has left. */
  void (*stop)(void);
  void (*get_stats)(tfdump_served_stats* out);
  /* The master step id a TfdumpIdentity op on capture slot `slot` saw since
   * the last call (0: none); clears it. */
  int64_t (*take_slot_step)(int slot);
} tfdump_served_api;

const tfdump_served_api* tfdump_served_get_api(void);

#ifdef __cplusplus
}
#endif

#endif /* TFDUMP_SERVED_API_H_ */
