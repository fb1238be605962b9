// Shared by our XLA FFI kernels (depthwise.cc, dense.cc): work spread over XLA's own intra-op
// thread pool.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace mkln {

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
