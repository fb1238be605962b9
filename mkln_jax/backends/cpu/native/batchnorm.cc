// BatchNorm's per-channel sums for XLA:CPU through the XLA FFI, float32, channels last (any
// rank; the statistics run over every axis but the last):
// - the forward pass's batch mean and variance (E[x^2] - E[x]^2, clipped at 0: flax's "fast
//   variance"), from one read of x;
// - the backward pass's sum(dy) and sum(dy * (x - mean)), from one read of x and dy.
//
// Why: XLA:CPU (YNNPACK's reductions, jaxlib 0.12) reduces each of the two sums of a pass on
// its own, one thread each, and keeps x - mean as a tensor of its own for the backward pass.
// Here both sums come from one pass over memory, spread over XLA's intra-op pool, and x - mean
// is never stored (models/layers.py recomputes it inside its elementwise fusions).
//
// Reproducible whatever the thread count: the rows are cut into a fixed number of chunks; a
// chunk sums blocks of rows in float and the blocks in double; the chunks are added in order.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"

namespace {

using mkln::kLanes;
using mkln::Load;
using mkln::ParallelFor;
using mkln::Store;
using mkln::Vec;

constexpr int64_t kChunks = 32;     // fixed, so the sums do not depend on the thread count
constexpr int64_t kBlockRows = 64;  // rows summed in float before they join the double sums

// fa += x, fb += x * x (or, with Grad, fa += dy, fb += dy * (x - mean)) for row pairs (r, r + 1)
// and channels [k, k + kLanes): rows are read whole and in order, the running sums of a block
// of rows stay in L1.
template <bool Grad>
inline void AddRows(const float* x, const float* dy, const float* mean, int64_t c, int64_t r,
                    bool pair, int64_t k, float* fa, float* fb) {
  const Vec x0 = Load(x + r * c + k), x1 = pair ? Load(x + (r + 1) * c + k) : Vec{};
  if constexpr (Grad) {
    const Vec m = Load(mean + k);
    const Vec d0 = Load(dy + r * c + k), d1 = pair ? Load(dy + (r + 1) * c + k) : Vec{};
    Store(fa + k, Load(fa + k) + (d0 + d1));
    Store(fb + k, Load(fb + k) + (d0 * (x0 - m) + d1 * (x1 - m)));
  } else {
    Store(fa + k, Load(fa + k) + (x0 + x1));
    Store(fb + k, Load(fb + k) + (x0 * x0 + x1 * x1));
  }
}

// The two sums of every channel over rows [r0, r1), into a[0, c) and b[0, c).
template <bool Grad>
void SumChunk(const float* x, const float* dy, const float* mean, int64_t c, int64_t r0,
              int64_t r1, double* a, double* b) {
  std::fill(a, a + c, 0.0);
  std::fill(b, b + c, 0.0);
  std::vector<float> block(2 * c);
  float* fa = block.data();
  float* fb = fa + c;
  const int64_t full = c / kLanes * kLanes;
  for (int64_t lo = r0; lo < r1; lo += kBlockRows) {
    const int64_t hi = std::min(r1, lo + kBlockRows);
    std::fill(fa, fa + 2 * c, 0.0f);
    for (int64_t r = lo; r < hi; r += 2) {
      const bool pair = r + 1 < hi;
      for (int64_t k = 0; k < full; k += kLanes) AddRows<Grad>(x, dy, mean, c, r, pair, k, fa, fb);
      for (int64_t q = r; q < r + 1 + pair; ++q) {  // channels past the last whole vector
        for (int64_t k = full; k < c; ++k) {
          const float xv = x[q * c + k];
          if constexpr (Grad) {
            const float d = dy[q * c + k];
            fa[k] += d;
            fb[k] += d * (xv - mean[k]);
          } else {
            fa[k] += xv;
            fb[k] += xv * xv;
          }
        }
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      a[k] += fa[k];
      b[k] += fb[k];
    }
  }
}

// Both sums over all `rows` rows of c channels, chunks on the pool, added in chunk order into
// a and b (double).
template <bool Grad>
void Sums(ffi::ThreadPool& pool, const float* x, const float* dy, const float* mean,
          int64_t rows, int64_t c, std::vector<double>& a, std::vector<double>& b) {
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, kChunks));
  std::vector<double> parts(chunks * 2 * c);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    double* mine = parts.data() + chunk * 2 * c;
    SumChunk<Grad>(x, dy, mean, c, chunk * rows / chunks, (chunk + 1) * rows / chunks, mine,
                   mine + c);
  });
  a.assign(c, 0.0);
  b.assign(c, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const double* part = parts.data() + chunk * 2 * c;
    for (int64_t k = 0; k < c; ++k) {
      a[k] += part[k];
      b[k] += part[c + k];
    }
  }
}

// x's channel count and row count (the product of its other dimensions), after checking that
// out is (2, channels).
ffi::Error Shape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> out, int64_t& rows,
                 int64_t& c) {
  if (x.size() < 1 || out.size() != 2 || out[0] != 2 || out[1] != x.back()) {
    return ffi::Error::InvalidArgument(
        "batch norm sums: want x (..., C) and a (2, C) result");
  }
  c = x.back();
  rows = 1;
  for (size_t d = 0; d + 1 < x.size(); ++d) rows *= x[d];
  return ffi::Error::Success();
}

// out[0] = mean, out[1] = max(E[x^2] - mean^2, 0), per channel.
ffi::Error StatsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                     ffi::ResultBuffer<ffi::F32> out) {
  int64_t rows, c;
  if (auto e = Shape(x.dimensions(), out->dimensions(), rows, c); e.failure()) return e;
  float* o = out->typed_data();
  if (rows == 0) {  // the mean of nothing, as jnp.mean has it
    std::fill(o, o + 2 * c, std::numeric_limits<float>::quiet_NaN());
    return ffi::Error::Success();
  }
  std::vector<double> s, q;
  Sums<false>(pool, x.typed_data(), nullptr, nullptr, rows, c, s, q);
  for (int64_t k = 0; k < c; ++k) {
    const double mean = s[k] / rows;
    o[k] = static_cast<float>(mean);
    o[c + k] = static_cast<float>(std::max(q[k] / rows - mean * mean, 0.0));
  }
  return ffi::Error::Success();
}

// out[0] = sum(dy), out[1] = sum(dy * (x - mean)), per channel.
ffi::Error GradStatsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
                         ffi::ResultBuffer<ffi::F32> out) {
  int64_t rows, c;
  if (auto e = Shape(x.dimensions(), out->dimensions(), rows, c); e.failure()) return e;
  const auto xd = x.dimensions(), dd = dy.dimensions(), md = mean.dimensions();
  if (!std::equal(xd.begin(), xd.end(), dd.begin(), dd.end()) || md.size() != 1 || md[0] != c) {
    return ffi::Error::InvalidArgument("batch norm sums: want dy shaped as x and a (C,) mean");
  }
  std::vector<double> s, p;
  Sums<true>(pool, x.typed_data(), dy.typed_data(), mean.typed_data(), rows, c, s, p);
  float* o = out->typed_data();
  for (int64_t k = 0; k < c; ++k) {
    o[k] = static_cast<float>(s[k]);
    o[c + k] = static_cast<float>(p[k]);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnBatchNormStats, StatsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnBatchNormGradStats, GradStatsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
