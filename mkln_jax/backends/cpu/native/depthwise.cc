// Depthwise 2-D convolution for XLA:CPU through the XLA FFI: forward, input gradient and filter
// gradient, NHWC float32, square k x k kernel (k, k, C), one stride for both axes, explicit
// top/left padding (the output's size fixes the bottom/right padding).
//
// Why: XLA:CPU lowers depthwise convolutions and above all their filter gradients poorly, and
// the jnp formulation in models/layers.py (one fused slice-multiply-reduce per kernel tap) reads
// the input and the output gradient from memory once per tap. Here each output row is produced
// with its k*k taps accumulated in registers, channel blocks innermost (contiguous in NHWC, so
// the compiler vectorises them), and work is spread over XLA's own intra-op thread pool.
//
// Built on first use by mkln_jax/native/__init__.py against the headers jaxlib ships.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"

namespace {

constexpr int64_t kBlock = 64;  // channels per register block (4 AVX-512 or 8 AVX2 vectors)

struct Geometry {
  int64_t n, h, w, c;    // input
  int64_t k, s, ph, pw;  // kernel, stride, top/left padding
  int64_t oh, ow;        // output
};

using mkln::kLanes;
using mkln::Load;
using mkln::ParallelFor;
using mkln::Store;
using mkln::ValidRange;
using mkln::Vec;

constexpr int kVecs = kBlock / kLanes;

// Sums over taps of a[tap] * b[tap] for one 64-channel block, in registers: taps (count of
// them) are offsets into a and b from their bases. GCC kept the generic loop's float[64]
// accumulator in memory, storing and reloading it at every tap.
inline void TapsBlock(const float* a, const int64_t* a_off, const float* b, const int64_t* b_off,
                      int count, float* out) {
  Vec acc[kVecs] = {};
  for (int t = 0; t < count; ++t) {
    const float* ap = a + a_off[t];
    const float* bp = b + b_off[t];
    for (int v = 0; v < kVecs; ++v) acc[v] += Load(ap + v * kLanes) * Load(bp + v * kLanes);
  }
  for (int v = 0; v < kVecs; ++v) Store(out + v * kLanes, acc[v]);
}

// The same for the channels past the last whole block (cb < 64 of them).
inline void TapsTail(const float* a, const int64_t* a_off, const float* b, const int64_t* b_off,
                     int count, int64_t cb, float* out) {
  float acc[kBlock] = {};
  for (int t = 0; t < count; ++t) {
    const float* __restrict ap = a + a_off[t];
    const float* __restrict bp = b + b_off[t];
    for (int64_t c = 0; c < cb; ++c) acc[c] += ap[c] * bp[c];
  }
  std::memcpy(out, acc, cb * sizeof(float));
}

// out[pixel, c] = sum over its taps of a[tap's pixel, c] * b[tap, c], every channel block.
inline void TapsPixel(const float* a, const int64_t* a_off, const float* b, const int64_t* b_off,
                      int count, int64_t c, float* out) {
  int64_t c0 = 0;
  for (; c0 + kBlock <= c; c0 += kBlock) TapsBlock(a + c0, a_off, b + c0, b_off, count, out + c0);
  if (c0 < c) TapsTail(a + c0, a_off, b + c0, b_off, count, c - c0, out + c0);
}

// For every column col in [0, width): run(col, taps(col)), where taps(col) fills the tap
// offsets (relative to the column) and returns their count. In the interior [inner_lo,
// inner_hi), where every tap is in range, the offsets are the same for each column and are
// computed once.
template <typename Taps, typename Run>
void ForColumns(int64_t width, int64_t inner_lo, int64_t inner_hi, Taps taps, Run run) {
  for (int64_t col = 0; col < width; ++col) {
    if (col == inner_lo && inner_lo < inner_hi) {
      const int count = taps(col);
      for (; col < inner_hi; ++col) run(col, count);
      if (col >= width) break;
    }
    run(col, taps(col));
  }
}

void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w, float* y) {
  // Columns q whose k taps all fall inside x: the same offsets from x + q * s * c for each.
  const int64_t inner_lo = ValidRange(0, g.pw, g.s, g.w, g.ow).first;
  const int64_t inner_hi = std::max(inner_lo, ValidRange(g.k - 1, g.pw, g.s, g.w, g.ow).second);
  ParallelFor(pool, g.n * g.oh, [&g, x, w, y, inner_lo, inner_hi](int64_t item) {
    const int64_t n = item / g.oh, r = item % g.oh;
    float* yrow = y + (n * g.oh + r) * g.ow * g.c;
    std::vector<int64_t> x_off(g.k * g.k), w_off(g.k * g.k);
    // The taps of output (r, q) that fall inside x, as offsets from x + q * s * c.
    auto taps = [&](int64_t q) {
      int count = 0;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t ih = r * g.s + i - g.ph;
        if (ih < 0 || ih >= g.h) continue;
        for (int64_t j = 0; j < g.k; ++j) {
          const int64_t iw = q * g.s + j - g.pw;
          if (iw < 0 || iw >= g.w) continue;
          x_off[count] = ((n * g.h + ih) * g.w + j - g.pw) * g.c;
          w_off[count++] = (i * g.k + j) * g.c;
        }
      }
      return count;
    };
    ForColumns(g.ow, inner_lo, inner_hi, taps, [&](int64_t q, int count) {
      TapsPixel(x + q * g.s * g.c, x_off.data(), w, w_off.data(), count, g.c, yrow + q * g.c);
    });
  });
}

// dx[n, ih, iw] = sum over taps (i, j) with ih = oh * s + i - ph, iw = ow * s + j - pw of
// dy[n, oh, ow] * w[i, j]: gathered per input row, so each row is written by one worker.
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const float* w,
               float* dx) {
  // At stride 1, the columns iw every one of whose k taps reaches an output: the same offsets
  // from dy + iw * c for each.
  int64_t inner_lo = 0, inner_hi = 0;
  if (g.s == 1) {
    inner_lo = std::max<int64_t>(0, g.k - 1 - g.pw);
    inner_hi = std::max(inner_lo, std::min(g.w, g.ow - g.pw));
  }
  ParallelFor(pool, g.n * g.h, [&g, dy, w, dx, inner_lo, inner_hi](int64_t item) {
    const int64_t n = item / g.h, ih = item % g.h;
    float* dxrow = dx + (n * g.h + ih) * g.w * g.c;
    std::vector<int64_t> dy_off(g.k * g.k), w_off(g.k * g.k);
    // The outputs that input (ih, iw) fed, and through which taps, as offsets from
    // dy + iw / s * c (exact at stride 1, where the interior uses them).
    auto taps = [&](int64_t iw) {
      int count = 0;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t t = ih + g.ph - i;
        if (t < 0 || t % g.s != 0 || t / g.s >= g.oh) continue;
        for (int64_t j = 0; j < g.k; ++j) {
          const int64_t u = iw + g.pw - j;
          if (u < 0 || u % g.s != 0 || u / g.s >= g.ow) continue;
          dy_off[count] = ((n * g.oh + t / g.s) * g.ow + u / g.s) * g.c - iw * g.c;
          w_off[count++] = (i * g.k + j) * g.c;
        }
      }
      return count;
    };
    ForColumns(g.w, inner_lo, inner_hi, taps, [&](int64_t iw, int count) {
      TapsPixel(dy + iw * g.c, dy_off.data(), w, w_off.data(), count, g.c, dxrow + iw * g.c);
    });
  });
}

// dw[i, j] = sum over n, oh, ow of x[n, oh * s + i - ph, ow * s + j - pw] * dy[n, oh, ow]. The
// output rows are cut into a number of contiguous chunks set by the shapes alone (up to 64, about
// 2M multiply-adds each), each summed in row order into its own (k, k, C) partial, whichever
// worker takes it; the partials are then added in chunk order. So the result is the same bit for
// bit on every run, however the pool schedules the work. Within a chunk, rows go in groups whose
// x and dy stay in L2 while every tap and channel block sums over the whole group in registers.
constexpr int64_t kFilterGradChunks = 64;

// acc (kVecs vectors) += sum over the group's rows and the tap's valid columns of x * dy.
inline void FilterBlock(const Geometry& g, const float* x, const float* dy, int64_t row_lo,
                        int64_t row_hi, int64_t i, int64_t j, int64_t lo, int64_t hi,
                        int64_t c0, float* out) {
  Vec acc[kVecs] = {};
  for (int64_t item = row_lo; item < row_hi; ++item) {
    const int64_t n = item / g.oh, r = item % g.oh, ih = r * g.s + i - g.ph;
    if (ih < 0 || ih >= g.h) continue;
    const float* xp = x + ((n * g.h + ih) * g.w + lo * g.s + j - g.pw) * g.c + c0;
    const float* dp = dy + (item * g.ow + lo) * g.c + c0;
    for (int64_t q = lo; q < hi; ++q, xp += g.s * g.c, dp += g.c) {
      for (int v = 0; v < kVecs; ++v) acc[v] += Load(xp + v * kLanes) * Load(dp + v * kLanes);
    }
  }
  for (int v = 0; v < kVecs; ++v) Store(out + v * kLanes, Load(out + v * kLanes) + acc[v]);
}

inline void FilterTail(const Geometry& g, const float* x, const float* dy, int64_t row_lo,
                       int64_t row_hi, int64_t i, int64_t j, int64_t lo, int64_t hi, int64_t c0,
                       int64_t cb, float* out) {
  float acc[kBlock] = {};
  for (int64_t item = row_lo; item < row_hi; ++item) {
    const int64_t n = item / g.oh, r = item % g.oh, ih = r * g.s + i - g.ph;
    if (ih < 0 || ih >= g.h) continue;
    for (int64_t q = lo; q < hi; ++q) {
      const float* __restrict xv = x + ((n * g.h + ih) * g.w + q * g.s + j - g.pw) * g.c + c0;
      const float* __restrict dv = dy + (item * g.ow + q) * g.c + c0;
      for (int64_t c = 0; c < cb; ++c) acc[c] += xv[c] * dv[c];
    }
  }
  for (int64_t c = 0; c < cb; ++c) out[c] += acc[c];
}

void FilterGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                float* dw) {
  const int64_t taps = g.k * g.k * g.c;
  const int64_t rows = g.n * g.oh;
  const int64_t work = rows * g.ow * taps;  // multiply-adds
  const int64_t chunks =
      std::max<int64_t>(1, std::min({rows, kFilterGradChunks, std::max<int64_t>(2, work >> 21)}));
  // Rows per group: their x (k rows each, shared) and dy within ~256 KiB.
  const int64_t group =
      std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, g.ow * g.c * (g.s + 1)));
  std::vector<float> partial(chunks * taps, 0.0f);
  float* parts = partial.data();
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    float* mine = parts + chunk * taps;
    const int64_t r1 = (chunk + 1) * rows / chunks;
    for (int64_t lo_row = chunk * rows / chunks; lo_row < r1; lo_row += group) {
      const int64_t hi_row = std::min(r1, lo_row + group);
      for (int64_t i = 0; i < g.k; ++i) {
        for (int64_t j = 0; j < g.k; ++j) {
          const auto [lo, hi] = ValidRange(j, g.pw, g.s, g.w, g.ow);
          float* out = mine + (i * g.k + j) * g.c;
          int64_t c0 = 0;
          for (; c0 + kBlock <= g.c; c0 += kBlock) {
            FilterBlock(g, x, dy, lo_row, hi_row, i, j, lo, hi, c0, out + c0);
          }
          if (c0 < g.c) FilterTail(g, x, dy, lo_row, hi_row, i, j, lo, hi, c0, g.c - c0, out + c0);
        }
      }
    }
  });
  std::fill(dw, dw + taps, 0.0f);
  for (int64_t p = 0; p < chunks; ++p) {
    const float* __restrict part = parts + p * taps;
    for (int64_t t = 0; t < taps; ++t) dw[t] += part[t];
  }
}

// The geometry of one call from its operands' shapes (input, kernel, output in the forward
// sense), checked so that a malformed call is an error rather than an out-of-bounds access.
ffi::Error MakeGeometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> kernel,
                        ffi::Span<const int64_t> out, int64_t stride, int64_t pad_h,
                        int64_t pad_w, Geometry& g) {
  if (in.size() != 4 || kernel.size() != 3 || out.size() != 4) {
    return ffi::Error::InvalidArgument("depthwise: want NHWC input/output and a (k, k, C) kernel");
  }
  g = Geometry{in[0], in[1], in[2], in[3], kernel[0], stride, pad_h, pad_w, out[1], out[2]};
  if (kernel[1] != g.k || kernel[2] != g.c || out[3] != g.c || out[0] != g.n) {
    return ffi::Error::InvalidArgument("depthwise: input, kernel and output shapes disagree");
  }
  if (g.k <= 0 || g.s <= 0 || g.ph < 0 || g.pw < 0 || g.ph >= g.k || g.pw >= g.k) {
    return ffi::Error::InvalidArgument("depthwise: bad kernel, stride or padding");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad_h,
                       int64_t pad_w) {
  Geometry g;
  auto e =
      MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride, pad_h, pad_w, g);
  if (e.failure()) return e;
  Forward(pool, g, x.typed_data(), w.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                         int64_t stride, int64_t pad_h, int64_t pad_w) {
  Geometry g;
  auto e =
      MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), stride, pad_h, pad_w, g);
  if (e.failure()) return e;
  InputGrad(pool, g, dy.typed_data(), w.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

ffi::Error FilterGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t stride, int64_t pad_h, int64_t pad_w) {
  Geometry g;
  auto e =
      MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), stride, pad_h, pad_w, g);
  if (e.failure()) return e;
  FilterGrad(pool, g, x.typed_data(), dy.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnDepthwiseForward, ForwardImpl, MKLN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnDepthwiseInputGrad, InputGradImpl, MKLN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnDepthwiseFilterGrad, FilterGradImpl, MKLN_CONV_BINDING);
