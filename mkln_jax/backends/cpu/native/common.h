// Shared by our XLA FFI kernels (depthwise.cc, dense.cc): work spread over XLA's own intra-op
// thread pool, and float vectors as GCC/Clang vector extensions (so one source builds for
// AVX-512, AVX2 or NEON; -march=native picks the width).

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace mkln {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// Output positions o in [0, out) whose input position o * s + i - pad lies in [0, size), for
// kernel tap i along one axis: [lo, hi).
inline std::pair<int64_t, int64_t> ValidRange(int64_t i, int64_t pad, int64_t s, int64_t size,
                                              int64_t out) {
  const int64_t lo = pad > i ? (pad - i + s - 1) / s : 0;
  const int64_t hi = size - 1 + pad - i >= 0 ? (size - 1 + pad - i) / s + 1 : 0;
  return {lo, std::min(hi, out)};
}

// Calls body(item) for every item in [0, items), on the calling thread and on up to
// pool.num_threads() tasks of XLA's intra-op pool. The caller takes items too, so this finishes
// even where the pool runs nothing; late tasks find no work and return, and they own the state
// they touch, so they may outlive the call.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t items, Body body) {
  struct State {
    explicit State(int64_t items, Body body) : items(items), body(std::move(body)) {}
    const int64_t items;
    Body body;
    std::atomic<int64_t> next{0}, done{0};
    void Work() {
      for (;;) {
        const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
        if (item >= items) return;
        body(item);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>(items, std::move(body));
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->Work(); });
  state->Work();
  while (state->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

}  // namespace mkln

// The FFI signature every convolution kernel here shares: XLA's intra-op pool, two float32
// operands, one result, the stride and the top/left padding (a kernel may bind more).
#define MKLN_CONV_BINDING           \
  ffi::Ffi::Bind()                  \
      .Ctx<ffi::ThreadPool>()       \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Arg<ffi::Buffer<ffi::F32>>() \
      .Ret<ffi::Buffer<ffi::F32>>() \
      .Attr<int64_t>("stride")      \
      .Attr<int64_t>("pad_h")       \
      .Attr<int64_t>("pad_w")
