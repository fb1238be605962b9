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

using mkln::ParallelFor;
using mkln::ValidRange;

void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w, float* y) {
  ParallelFor(pool, g.n * g.oh, [&g, x, w, y](int64_t item) {
    const int64_t n = item / g.oh, r = item % g.oh;
    float* yrow = y + (n * g.oh + r) * g.ow * g.c;
    for (int64_t q = 0; q < g.ow; ++q) {
      for (int64_t c0 = 0; c0 < g.c; c0 += kBlock) {
        const int64_t cb = std::min(kBlock, g.c - c0);
        float acc[kBlock] = {};
        for (int64_t i = 0; i < g.k; ++i) {
          const int64_t ih = r * g.s + i - g.ph;
          if (ih < 0 || ih >= g.h) continue;
          const float* xrow = x + (n * g.h + ih) * g.w * g.c + c0;
          for (int64_t j = 0; j < g.k; ++j) {
            const int64_t iw = q * g.s + j - g.pw;
            if (iw < 0 || iw >= g.w) continue;
            const float* __restrict xv = xrow + iw * g.c;
            const float* __restrict wv = w + (i * g.k + j) * g.c + c0;
            for (int64_t c = 0; c < cb; ++c) acc[c] += xv[c] * wv[c];
          }
        }
        std::memcpy(yrow + q * g.c + c0, acc, cb * sizeof(float));
      }
    }
  });
}

// dx[n, ih, iw] = sum over taps (i, j) with ih = oh * s + i - ph, iw = ow * s + j - pw of
// dy[n, oh, ow] * w[i, j]: gathered per input row, so each row is written by one worker.
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const float* w,
               float* dx) {
  ParallelFor(pool, g.n * g.h, [&g, dy, w, dx](int64_t item) {
    const int64_t n = item / g.h, ih = item % g.h;
    float* dxrow = dx + (n * g.h + ih) * g.w * g.c;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      for (int64_t c0 = 0; c0 < g.c; c0 += kBlock) {
        const int64_t cb = std::min(kBlock, g.c - c0);
        float acc[kBlock] = {};
        for (int64_t i = 0; i < g.k; ++i) {
          const int64_t t = ih + g.ph - i;
          if (t < 0 || t % g.s != 0 || t / g.s >= g.oh) continue;
          const float* dyrow = dy + (n * g.oh + t / g.s) * g.ow * g.c + c0;
          for (int64_t j = 0; j < g.k; ++j) {
            const int64_t u = iw + g.pw - j;
            if (u < 0 || u % g.s != 0 || u / g.s >= g.ow) continue;
            const float* __restrict dv = dyrow + (u / g.s) * g.c;
            const float* __restrict wv = w + (i * g.k + j) * g.c + c0;
            for (int64_t c = 0; c < cb; ++c) acc[c] += dv[c] * wv[c];
          }
        }
        std::memcpy(dxrow + iw * g.c + c0, acc, cb * sizeof(float));
      }
    }
  });
}

// dw[i, j] = sum over n, oh, ow of x[n, oh * s + i - ph, ow * s + j - pw] * dy[n, oh, ow]. The
// output rows are cut into a fixed number of contiguous chunks (set by the shapes alone), each
// summed in row order into its own (k, k, C) partial, whichever worker takes it; the partials
// are then added in chunk order. So the result is the same bit for bit on every run, however
// the pool schedules the work.
constexpr int64_t kFilterGradChunks = 64;

void FilterGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                float* dw) {
  const int64_t taps = g.k * g.k * g.c;
  const int64_t rows = g.n * g.oh;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, kFilterGradChunks));
  std::vector<float> partial(chunks * taps, 0.0f);
  float* parts = partial.data();
  ParallelFor(pool, chunks, [&g, x, dy, parts, taps, rows, chunks](int64_t chunk) {
    float* mine = parts + chunk * taps;
    for (int64_t item = chunk * rows / chunks; item < (chunk + 1) * rows / chunks; ++item) {
      const int64_t n = item / g.oh, r = item % g.oh;
      const float* dyrow = dy + (n * g.oh + r) * g.ow * g.c;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t ih = r * g.s + i - g.ph;
        if (ih < 0 || ih >= g.h) continue;
        const float* xrow = x + (n * g.h + ih) * g.w * g.c;
        for (int64_t j = 0; j < g.k; ++j) {
          const auto [lo, hi] = ValidRange(j, g.pw, g.s, g.w, g.ow);
          for (int64_t c0 = 0; c0 < g.c; c0 += kBlock) {
            const int64_t cb = std::min(kBlock, g.c - c0);
            float acc[kBlock] = {};
            for (int64_t q = lo; q < hi; ++q) {
              const float* __restrict xv = xrow + (q * g.s + j - g.pw) * g.c + c0;
              const float* __restrict dv = dyrow + q * g.c + c0;
              for (int64_t c = 0; c < cb; ++c) acc[c] += xv[c] * dv[c];
            }
            float* __restrict out = mine + (i * g.k + j) * g.c + c0;
            for (int64_t c = 0; c < cb; ++c) out[c] += acc[c];
          }
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
