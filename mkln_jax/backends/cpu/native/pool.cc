// Max pooling for XLA:CPU through the XLA FFI, NHWC float32: square k x k windows, one stride
// for both axes, top/left padding (the output's size fixes the bottom/right padding); padded
// positions never win.
//
// Why: XLA differentiates max pooling with select-and-scatter, and the jnp formulation in
// models/layers.py finds each window's winner again in the backward pass by comparing all k*k
// shifted windows with the output, at input resolution. Here the forward pass records the
// winning tap of every output (one byte), and the backward pass gathers: each input pixel adds
// the output gradients of the (at most ceil(k/s)^2) windows that it won. Both passes are one
// read and one write of memory, rows spread over XLA's intra-op pool.
//
// Ties go to the first tap in window order (row-major), and a NaN wins over numbers, as XLA's
// and PyTorch's max pooling choose.

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"

namespace {

using mkln::kLanes;
using mkln::Load;
using mkln::ParallelFor;
using mkln::Store;
using mkln::ValidRange;
using mkln::Vec;

typedef uint8_t Taps __attribute__((vector_size(kLanes)));

struct Geometry {
  int64_t n, h, w, c;    // input
  int64_t k, s, ph, pw;  // window, stride, top/left padding
  int64_t oh, ow;        // output
};

constexpr int kBlock = 4;  // channel vectors per register block

// The maximum of V adjacent channel vectors over a window's taps inside the input (offsets into
// x, ids in window order) and the first tap that holds it, counting padding as -inf (so an
// all -inf window's winner may be a padded tap, as in XLA); a NaN wins over numbers. V independent chains: one
// compare/select chain alone would wait on its own latency at every tap.
template <int V>
inline void PoolVectors(const float* x, const int64_t* offsets, const float* ids, int64_t count,
                        float* y, uint8_t* taps) {
  Vec best[V], tap[V];
  for (int v = 0; v < V; ++v) {
    best[v] = Vec{} - std::numeric_limits<float>::infinity();
    tap[v] = Vec{};  // tap 0, maybe padding: a window of -inf gives nothing to the input
  }
  for (int64_t t = 0; t < count; ++t) {
    const float* p = x + offsets[t];
    const Vec id = Vec{} + ids[t];
    for (int v = 0; v < V; ++v) {
      const Vec val = Load(p + v * kLanes);
      const auto wins = (val > best[v]) | ((val != val) & (best[v] == best[v]));
      best[v] = wins ? val : best[v];
      tap[v] = wins ? id : tap[v];
    }
  }
  for (int v = 0; v < V; ++v) {
    Store(y + v * kLanes, best[v]);
    const Taps t = __builtin_convertvector(tap[v], Taps);
    std::memcpy(taps + v * kLanes, &t, sizeof t);
  }
}

void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, float* y,
             uint8_t* taps) {
  ParallelFor(pool, g.n * g.oh, [&g, x, y, taps](int64_t item) {
    const int64_t n = item / g.oh, r = item % g.oh;
    const int64_t vec_end = g.c - g.c % kLanes, block_end = g.c - g.c % (kBlock * kLanes);
    // The window's rows inside the input: taps i in [i0, i1).
    const int64_t i0 = std::max<int64_t>(0, g.ph - r * g.s);
    const int64_t i1 = std::min<int64_t>(g.k, g.h + g.ph - r * g.s);
    int64_t offsets[15 * 15];
    float ids[15 * 15];
    for (int64_t q = 0; q < g.ow; ++q) {
      const int64_t j0 = std::max<int64_t>(0, g.pw - q * g.s);
      const int64_t j1 = std::min<int64_t>(g.k, g.w + g.pw - q * g.s);
      int64_t count = 0;
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j, ++count) {
          offsets[count] = ((n * g.h + r * g.s - g.ph + i) * g.w + q * g.s - g.pw + j) * g.c;
          ids[count] = static_cast<float>(i * g.k + j);
        }
      }
      const int64_t out = ((n * g.oh + r) * g.ow + q) * g.c;
      int64_t c0 = 0;
      for (; c0 < block_end; c0 += kBlock * kLanes) {
        PoolVectors<kBlock>(x + c0, offsets, ids, count, y + out + c0, taps + out + c0);
      }
      for (; c0 < vec_end; c0 += kLanes) {
        PoolVectors<1>(x + c0, offsets, ids, count, y + out + c0, taps + out + c0);
      }
      for (int64_t c = vec_end; c < g.c; ++c) {
        float best = -std::numeric_limits<float>::infinity();
        float tap = 0;
        for (int64_t t = 0; t < count; ++t) {
          const float v = x[offsets[t] + c];
          if (v > best || (v != v && best == best)) best = v, tap = ids[t];
        }
        y[out + c] = best;
        taps[out + c] = static_cast<uint8_t>(tap);
      }
    }
  });
}

// The sum of V adjacent channel vectors of dy over the windows (offsets into dy and taps) whose
// winning tap is the one given (ids), in the windows' order.
template <int V>
inline void GatherVectors(const float* dy, const uint8_t* taps, const int64_t* offsets,
                          const float* ids, int64_t count, float* dx) {
  Vec acc[V];
  for (int v = 0; v < V; ++v) acc[v] = Vec{};
  for (int64_t t = 0; t < count; ++t) {
    for (int v = 0; v < V; ++v) {
      Taps won;
      std::memcpy(&won, taps + offsets[t] + v * kLanes, sizeof won);
      const Vec mask = __builtin_convertvector(won, Vec);
      acc[v] += mask == ids[t] ? Load(dy + offsets[t] + v * kLanes) : Vec{};
    }
  }
  for (int v = 0; v < V; ++v) Store(dx + v * kLanes, acc[v]);
}

// dx[n, ih, iw] = sum of dy[n, oh, ow] over the windows (oh, ow) whose winning tap (i, j) sits
// at ih = oh * s + i - ph, iw = ow * s + j - pw: gathered per input row, each row written by one
// worker, the windows added in a fixed order.
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const uint8_t* taps,
               float* dx) {
  // The windows covering input column iw: (output column, tap j) pairs, the same for every row.
  std::vector<std::pair<int64_t, int64_t>> cols;
  std::vector<int64_t> col_start{0};
  for (int64_t iw = 0; iw < g.w; ++iw) {
    for (int64_t j = 0; j < g.k; ++j) {
      const int64_t u = iw + g.pw - j;
      if (u >= 0 && u % g.s == 0 && u / g.s < g.ow) cols.emplace_back(u / g.s, j);
    }
    col_start.push_back(static_cast<int64_t>(cols.size()));
  }
  ParallelFor(pool, g.n * g.h, [&g, &cols, &col_start, dy, taps, dx](int64_t item) {
    const int64_t n = item / g.h, ih = item % g.h;
    const int64_t vec_end = g.c - g.c % kLanes, block_end = g.c - g.c % (kBlock * kLanes);
    int64_t rows[15][2], nr = 0;  // (output row, tap i) of the windows covering row ih
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t t = ih + g.ph - i;
      if (t >= 0 && t % g.s == 0 && t / g.s < g.oh) rows[nr][0] = t / g.s, rows[nr++][1] = i;
    }
    int64_t offsets[15 * 15];
    float ids[15 * 15];
    float* dxrow = dx + (n * g.h + ih) * g.w * g.c;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      int64_t count = 0;
      for (int64_t a = 0; a < nr; ++a) {
        for (int64_t b = col_start[iw]; b < col_start[iw + 1]; ++b, ++count) {
          offsets[count] = ((n * g.oh + rows[a][0]) * g.ow + cols[b].first) * g.c;
          ids[count] = static_cast<float>(rows[a][1] * g.k + cols[b].second);
        }
      }
      float* out = dxrow + iw * g.c;
      int64_t c0 = 0;
      for (; c0 < block_end; c0 += kBlock * kLanes) {
        GatherVectors<kBlock>(dy + c0, taps + c0, offsets, ids, count, out + c0);
      }
      for (; c0 < vec_end; c0 += kLanes) {
        GatherVectors<1>(dy + c0, taps + c0, offsets, ids, count, out + c0);
      }
      for (int64_t c = vec_end; c < g.c; ++c) {
        float acc = 0;
        for (int64_t t = 0; t < count; ++t) {
          if (taps[offsets[t] + c] == ids[t]) acc += dy[offsets[t] + c];
        }
        out[c] = acc;
      }
    }
  });
}

ffi::Error MakeGeometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
                        ffi::Span<const int64_t> taps, int64_t k, int64_t stride, int64_t pad_h,
                        int64_t pad_w, Geometry& g) {
  if (in.size() != 4 || out.size() != 4 || taps.size() != 4) {
    return ffi::Error::InvalidArgument("max_pool: want NHWC input, output and taps");
  }
  g = Geometry{in[0], in[1], in[2], in[3], k, stride, pad_h, pad_w, out[1], out[2]};
  for (int d = 0; d < 4; ++d) {
    if (taps[d] != out[d]) {
      return ffi::Error::InvalidArgument("max_pool: output and taps shapes disagree");
    }
  }
  if (out[0] != g.n || out[3] != g.c) {
    return ffi::Error::InvalidArgument("max_pool: input and output shapes disagree");
  }
  // At most 15 x 15 windows (taps fit a byte) whose every row and column holds an input pixel.
  if (k <= 0 || k > 15 || stride <= 0 || pad_h < 0 || pad_w < 0 || pad_h >= k || pad_w >= k ||
      (g.oh - 1) * stride - pad_h >= g.h || (g.ow - 1) * stride - pad_w >= g.w) {
    return ffi::Error::InvalidArgument("max_pool: bad window, stride, padding or output size");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::U8> taps,
                       int64_t k, int64_t stride, int64_t pad_h, int64_t pad_w) {
  Geometry g;
  auto e = MakeGeometry(x.dimensions(), y->dimensions(), taps->dimensions(), k, stride, pad_h,
                        pad_w, g);
  if (e.failure()) return e;
  Forward(pool, g, x.typed_data(), y->typed_data(), taps->typed_data());
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::U8> taps, ffi::ResultBuffer<ffi::F32> dx, int64_t k,
                         int64_t stride, int64_t pad_h, int64_t pad_w) {
  Geometry g;
  auto e = MakeGeometry(dx->dimensions(), dy.dimensions(), taps.dimensions(), k, stride, pad_h,
                        pad_w, g);
  if (e.failure()) return e;
  InputGrad(pool, g, dy.typed_data(), taps.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnMaxPoolForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<int64_t>("kernel")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnMaxPoolInputGrad, InputGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kernel")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_h")
                                  .Attr<int64_t>("pad_w"));
