/* The C ABI of TF2 capture in libtfdump_tf_bridge.so (csrc/bridge/tf2_capture.cc):
 * the TfdumpCaptureV2 op that tfdump_fast.enable_dump_debug_info inserts
 * after each instrumented op of a traced tf.function graph (and runs on each
 * eager op's outputs), and the one engine run it submits to.
 *
 * Plain C types only. Python calls these through ctypes (src/tfdump_fast/tf2.py):
 * a few calls per top-level function execution, none per tensor.
 */
#ifndef TFDUMP_TF2_API_H_
#define TFDUMP_TF2_API_H_

#include <stdint.h>

#include "engine_api.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TFDUMP_TF2_API_VERSION 2

typedef struct tfdump_tf2_stats {
  uint64_t tensors_submitted; /* handed to the engine (accepted or dropped by its policy) */
  uint64_t tensors_unbound;   /* ran while no run was bound (sampled out, or disabled) */
  uint64_t tensors_failed;    /* could not be captured (bad run, undescribable tensor) */
  uint64_t tensors_skipped;   /* a summary mode is not defined for them (version 2) */
} tfdump_tf2_stats;

/* TFDUMP_TF2_API_VERSION. */
int tfdump_tf2_api_version(void);
/* Binds capture to an engine (its C API, valid until tfdump_tf2_unbind
 * returns) with no run yet. 0, or -1 if another engine is bound or the
 * engine speaks another API version. */
int tfdump_tf2_bind(const tfdump_engine_api* engine);
/* Makes `run_id` (0: none, tensors are not captured) the run that capture
 * ops submit to, then waits until no TF thread is still submitting to the
 * previous run, so that the caller may end it. Returns the previous run id. */
uint32_t tfdump_tf2_switch_run(uint32_t run_id);
/* Unbinds after every submitting thread has left. */
void tfdump_tf2_unbind(void);
void tfdump_tf2_get_stats(tfdump_tf2_stats* out);

#ifdef __cplusplus
}
#endif

#endif /* TFDUMP_TF2_API_H_ */
