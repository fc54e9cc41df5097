/* The C ABI of the TensorFlow capture bridge, libtfdump_tf_bridge.so.
 *
 * The bridge is compiled against the TensorFlow that runs (flags from
 * tf.sysconfig) on first use, into a per-TF-version cache, and loaded by
 * tfdump_fast._bridge with dlopen. It registers `memcbk://` callbacks with
 * TensorFlow's DebugCallbackRegistry and forwards every tensor to the engine
 * through tfdump_engine_api (engine_api.h). Plain C types only.
 */
#ifndef TFDUMP_BRIDGE_API_H_
#define TFDUMP_BRIDGE_API_H_

#include <stddef.h>
#include <stdint.h>

#include "engine_api.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TFDUMP_BRIDGE_API_VERSION 2

typedef struct tfdump_bridge_stats {
  uint64_t tensors_forwarded;   /* handed to an engine */
  uint64_t tensors_orphaned;    /* arrived on a slot with no open run */
  uint64_t tensors_failed;      /* could not be captured (bad tensor, ...) */
  /* Summary debug ops (bridge/summaries.h): summaries handed to an engine,
   * tensors skipped because their summary is not defined (variant,
   * resource, string, complex, uninitialized for the v2 modes, ...), and
   * healthy summaries left out under mute_if_healthy. */
  uint64_t summaries_submitted;
  uint64_t summaries_skipped;
  uint64_t summaries_muted;
} tfdump_bridge_stats;

typedef struct tfdump_bridge_api {
  int api_version;                 /* TFDUMP_BRIDGE_API_VERSION */
  const char* tf_version;          /* TF_VERSION_STRING the bridge was built against */
  const char* tf_git_version;      /* tf_git_version() at build time, may be "" */
  int max_slots;
  /* Takes a free slot for one Session.run and binds it to (engine, run_id).
   * Slots are process-wide and their URLs never change
   * (memcbk://tfdump_slot_<i>), so TF's executor cache stays valid; the
   * lowest free slot is taken. Writes the URL (NUL-terminated) to url_out.
   * Returns the slot index, or -1 when all slots are busy or url_cap is too
   * small. The engine_api pointer must stay valid until release_slot. */
  int (*acquire_slot)(const tfdump_engine_api* engine, uint32_t run_id,
                      char* url_out, size_t url_cap);
  /* Unbinds the slot after Session.run returned (every callback of that run
   * has completed by then). Tensors that still arrive are counted as
   * orphaned and discarded. */
  void (*release_slot)(int slot);
  void (*get_stats)(tfdump_bridge_stats* out);
} tfdump_bridge_api;

/* The one exported entry point. */
const tfdump_bridge_api* tfdump_bridge_get_api(void);

#ifdef __cplusplus
}
#endif

#endif /* TFDUMP_BRIDGE_API_H_ */
