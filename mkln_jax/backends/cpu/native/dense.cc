// Dense 2-D convolution (one group) for XLA:CPU through the XLA FFI: forward, input gradient and
// filter gradient, NHWC float32 with an HWIO (k, k, in, out) kernel, one stride for both axes,
// explicit top/left padding (the output's size fixes the bottom/right padding).
//
// Why: ResNet's step is mostly 3x3 convolutions, which XLA:CPU runs with Eigen's or YNNPACK's
// kernels: below its matrix products' rate (Eigen alone 60-95% of it, per kernel and shape),
// with transposes around the filter gradient and multiplications by the padding on small maps
// (docs/performance.md, section 3). Each kernel here is an implicit matrix product with a register tile of
// kR rows by kV vectors of output channels (6 x 4 AVX-512 vectors: 24 accumulators), the
// classic BLAS micro-kernel shape: per step of the reduction, kV vector loads, kR broadcasts
// and kR * kV fused multiply-adds, so the FMA units, not memory, set the pace.
//
// - Forward and input gradient share one gather kernel: a tile is kR output pixels; for every
//   kernel tap each pixel points at its input pixel's channels (or at zeros where the tap falls
//   in the padding), and the tap's weights are a (channels, out) matrix. The input gradient is
//   the same product with dy as input and the kernel transposed per tap ((k, k, out, in),
//   prepared by the caller); for stride s its pixels are taken phase by phase (rows and columns
//   of one residue mod s), so every pixel of a tile uses the same taps and the rest are skipped.
// - Filter gradient: dw[i, j, c, o] = sum over output pixels of x[tap (i, j) of the pixel, c] *
//   dy[pixel, o]; a tile is kR input channels by the output-channel block, reduced over pixels.
//   The pixels are cut into a fixed number of chunks (set by the shapes alone) whose partial
//   sums are added in chunk order, so results are the same bit for bit on every run.
//
// Vectors are GCC/Clang vector extensions, so the same source builds for AVX-512, AVX2 or
// NEON; output (and, for the input gradient, input) channels must be a multiple of kLanes
// (`MklnDenseLanes()`; the caller falls back to XLA otherwise).

#include <algorithm>
#include <cstdint>
#include <cstring>
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

#if defined(__AVX512F__)
constexpr int kV = 4;
#else
constexpr int kV = 2;
#endif
constexpr int kR = 6;
constexpr int64_t kColumns = kLanes * kV;  // output channels per work item

struct Geometry {
  int64_t n, h, w, ci;   // input
  int64_t k, s, ph, pw;  // kernel, stride, top/left padding
  int64_t oh, ow, co;    // output
};

// dst[r][0 : V * kLanes] (+)= sum over taps t < taps and channels c in [c_lo, c_hi) of
// src[t * R + r][c] * wt[t][c * ldw + 0 : V * kLanes].
template <int R, int V>
void GatherTile(int64_t taps, const float* const* src, const float* const* wt, int64_t ldw,
                int64_t c_lo, int64_t c_hi, float* const* dst, bool accumulate) {
  Vec acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = accumulate ? Load(dst[r] + v * kLanes) : Vec{};
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float* const* s = src + t * R;
    const float* wp = wt[t] + c_lo * ldw;
    for (int64_t c = c_lo; c < c_hi; ++c, wp += ldw) {
      Vec wv[V];
      for (int v = 0; v < V; ++v) wv[v] = Load(wp + v * kLanes);
      for (int r = 0; r < R; ++r) {
        const float b = s[r][c];
        for (int v = 0; v < V; ++v) acc[r][v] += b * wv[v];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) Store(dst[r] + v * kLanes, acc[r][v]);
  }
}

template <int R>
void GatherTileV(int vectors, int64_t taps, const float* const* src, const float* const* wt,
                 int64_t ldw, int64_t c_lo, int64_t c_hi, float* const* dst, bool accumulate) {
  switch (vectors) {
    case 1: return GatherTile<R, 1>(taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 2: return GatherTile<R, 2>(taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
#if defined(__AVX512F__)
    case 3: return GatherTile<R, 3>(taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 4: return GatherTile<R, 4>(taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
#endif
  }
}

void RunGatherTile(int rows, int vectors, int64_t taps, const float* const* src,
                   const float* const* wt, int64_t ldw, int64_t c_lo, int64_t c_hi,
                   float* const* dst, bool accumulate) {
  switch (rows) {
    case 1: return GatherTileV<1>(vectors, taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 2: return GatherTileV<2>(vectors, taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 3: return GatherTileV<3>(vectors, taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 4: return GatherTileV<4>(vectors, taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 5: return GatherTileV<5>(vectors, taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
    case 6: return GatherTileV<6>(vectors, taps, src, wt, ldw, c_lo, c_hi, dst, accumulate);
  }
}

// One gather problem: `pixels` output pixels, each the sum over `taps` taps of a (depth)-long
// source vector times that tap's (depth, out) weight matrix (row stride `out`; tap t's at
// w + t * depth * out). Fill(p, column, stride) writes pixel p's source for every tap t to
// column[t * stride] (nullptr where there is none); Dst(p) is the pixel's output row.
// Pixel coordinates are worked out once per pixel and reduction block, not per tap (that cost
// 15% at 32 x 32 x 64). Tiles run on across rows of the image: keeping them within a row, so
// that taps in the top/bottom padding could be skipped for the whole tile, made the 8 x 8 and
// 4 x 4 layers slower (4-pixel tiles reload each weight vector for fewer pixels).
template <typename Fill, typename Dst>
void Gather(ffi::ThreadPool& pool, int64_t pixels, int64_t taps, int64_t depth, int64_t out,
            const float* w, bool flip, Fill fill, Dst dst) {
  // The reduction is cut into blocks of channels whose weights (taps x block x kColumns) stay
  // within about 256 KiB, i.e. in L2, while a work item's tiles run over them.
  const int64_t block =
      std::min(depth, std::max<int64_t>(16, (int64_t{1} << 16) / (taps * kColumns)));
  constexpr int64_t kTilesPerItem = 8;
  const int64_t tiles = (pixels + kR - 1) / kR;
  const int64_t groups = (tiles + kTilesPerItem - 1) / kTilesPerItem;
  const int64_t column_blocks = (out + kColumns - 1) / kColumns;
  std::vector<float> zeros(depth, 0.0f);
  const float* zero = zeros.data();
  ParallelFor(pool, groups * column_blocks, [&](int64_t item) {
    const int64_t group = item / column_blocks, o0 = (item % column_blocks) * kColumns;
    const int vectors = static_cast<int>(std::min(kColumns, out - o0) / kLanes);
    std::vector<const float*> src(taps * kR), wt(taps);
    float* rows_out[kR];
    for (int64_t c_lo = 0; c_lo < depth; c_lo += block) {
      const int64_t c_hi = std::min(depth, c_lo + block);
      for (int64_t tile = group * kTilesPerItem;
           tile < std::min(tiles, (group + 1) * kTilesPerItem); ++tile) {
        const int64_t p0 = tile * kR;
        const int rows = static_cast<int>(std::min<int64_t>(kR, pixels - p0));
        for (int r = 0; r < rows; ++r) {
          rows_out[r] = dst(p0 + r) + o0;
          fill(p0 + r, src.data() + r, rows);
        }
        // Taps that no pixel of the tile reaches are left out (compacted in place).
        int64_t used = 0;
        for (int64_t t = 0; t < taps; ++t) {
          bool any = false;
          for (int r = 0; r < rows; ++r) {
            const float* s = src[t * rows + r];
            any |= s != nullptr;
            src[used * rows + r] = s ? s : zero;
          }
          if (any) wt[used++] = w + (flip ? taps - 1 - t : t) * depth * out + o0;
        }
        // With no tap at all, the tile's output is zero (the tile stores its empty sum).
        RunGatherTile(rows, vectors, used, src.data(), wt.data(), out, c_lo, c_hi, rows_out,
                      c_lo > 0);
      }
    }
  });
}

// Whether a kernel row's taps can be merged into one tap of depth k * ci: x[ih, iw + j, c] for
// j < k, c < ci is one contiguous run (NHWC), and so is w[i, j, c] (HWIO). That needs every
// column of every window inside the input (no left/right padding: the caller pads x), and pays
// only for few input channels (a stem), where per-tap depth ci would be too short a reduction.
constexpr int64_t kMergeBelowChannels = 16;
bool MergeRows(const Geometry& g) {
  return g.ci < kMergeBelowChannels && g.pw == 0 && (g.ow - 1) * g.s + g.k <= g.w;
}

// The forward pass one tap at a time, over only the output pixels that tap reaches (a
// rectangle per image), accumulating into y. For small maps, where the gather form would
// multiply many taps in the padding by zeros (31% of the work on a 4 x 4 map with a 3 x 3
// kernel, 16% on 8 x 8); it reloads each output tile once per tap, which is cheap when the
// per-tap reduction (ci) is long.
void TapwiseForward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w,
                    bool flip, float* y) {
  const int64_t plane = g.oh * g.ow;
  const int64_t images = std::max<int64_t>(1, std::min(g.n, 96 / plane));  // per work item
  const int64_t image_groups = (g.n + images - 1) / images;
  const int64_t column_blocks = (g.co + kColumns - 1) / kColumns;
  ParallelFor(pool, image_groups * column_blocks, [&](int64_t item) {
    const int64_t n0 = item / column_blocks * images, n1 = std::min(g.n, n0 + images);
    const int64_t o0 = (item % column_blocks) * kColumns;
    const int vectors = static_cast<int>(std::min(kColumns, g.co - o0) / kLanes);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t p = 0; p < plane; ++p) {
        std::fill_n(y + (n * plane + p) * g.co + o0, vectors * kLanes, 0.0f);
      }
    }
    const float* src[kR];
    float* dst[kR];
    for (int64_t i = 0; i < g.k; ++i) {
      const auto [r_lo, r_hi] = ValidRange(i, g.ph, g.s, g.h, g.oh);
      for (int64_t j = 0; j < g.k; ++j) {
        const auto [q_lo, q_hi] = ValidRange(j, g.pw, g.s, g.w, g.ow);
        const int64_t rows = r_hi - r_lo, cols = q_hi - q_lo;
        if (rows <= 0 || cols <= 0) continue;
        const int64_t tap = flip ? g.k * g.k - 1 - (i * g.k + j) : i * g.k + j;
        const float* wt = w + tap * g.ci * g.co + o0;
        const int64_t count = (n1 - n0) * rows * cols;  // the tap's pixels in these images
        for (int64_t p0 = 0; p0 < count; p0 += kR) {
          const int tile = static_cast<int>(std::min<int64_t>(kR, count - p0));
          for (int r = 0; r < tile; ++r) {
            const int64_t p = p0 + r, n = n0 + p / (rows * cols);
            const int64_t oh = r_lo + (p / cols) % rows, ow = q_lo + p % cols;
            src[r] = x + ((n * g.h + oh * g.s + i - g.ph) * g.w + ow * g.s + j - g.pw) * g.ci;
            dst[r] = y + ((n * g.oh + oh) * g.ow + ow) * g.co + o0;
          }
          RunGatherTile(tile, vectors, 1, src, &wt, g.co, 0, g.ci, dst, true);
        }
      }
    }
  });
}

// Whether the tapwise form pays: a long per-tap reduction and a tenth or more of the gather
// form's (pixel, tap) pairs in the padding.
bool Tapwise(const Geometry& g) {
  int64_t reached = 0;
  for (int64_t i = 0; i < g.k; ++i) {
    const auto [r_lo, r_hi] = ValidRange(i, g.ph, g.s, g.h, g.oh);
    for (int64_t j = 0; j < g.k; ++j) {
      const auto [q_lo, q_hi] = ValidRange(j, g.pw, g.s, g.w, g.ow);
      reached += std::max<int64_t>(0, r_hi - r_lo) * std::max<int64_t>(0, q_hi - q_lo);
    }
  }
  return g.ci >= 64 && 10 * reached < 9 * g.k * g.k * g.oh * g.ow;
}

// flip: the kernel's taps taken in reverse order (w[k - 1 - i, k - 1 - j]), as the input
// gradient of a stride-1 convolution wants them; cheaper here than a reversed copy in XLA.
void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* w, bool flip,
             float* y) {
  const int64_t plane = g.oh * g.ow;
  auto dst = [&g, y](int64_t p) { return y + p * g.co; };
  if (Tapwise(g)) return TapwiseForward(pool, g, x, w, flip, y);
  if (MergeRows(g) && !flip) {  // one tap per kernel row i, over (j, c)
    auto fill = [&g, x, plane](int64_t p, const float** column, int64_t stride) {
      const int64_t n = p / plane, q = p % plane, oh = q / g.ow, ow = q % g.ow;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t ih = oh * g.s + i - g.ph;
        const bool inside = ih >= 0 && ih < g.h;
        column[i * stride] = inside ? x + ((n * g.h + ih) * g.w + ow * g.s) * g.ci : nullptr;
      }
    };
    return Gather(pool, g.n * plane, g.k, g.k * g.ci, g.co, w, false, fill, dst);
  }
  auto fill = [&g, x, plane](int64_t p, const float** column, int64_t stride) {
    const int64_t n = p / plane, q = p % plane, oh = q / g.ow, ow = q % g.ow;
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t ih = oh * g.s + i - g.ph;
      for (int64_t j = 0; j < g.k; ++j) {
        const int64_t iw = ow * g.s + j - g.pw;
        const bool inside = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w;
        column[(i * g.k + j) * stride] = inside ? x + ((n * g.h + ih) * g.w + iw) * g.ci : nullptr;
      }
    }
  };
  Gather(pool, g.n * plane, g.k * g.k, g.ci, g.co, w, flip, fill, dst);
}

// dx[n, ih, iw, c] = sum over taps (i, j) and output pixels with oh * s + i - ph = ih and
// ow * s + j - pw = iw of dy[n, oh, ow, :] . w[i, j, c, :]; wt is w transposed per tap,
// (k, k, co, ci). Pixels are enumerated phase by phase: (ih mod s, iw mod s), then n, ih, iw.
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const float* wt,
               float* dx) {
  struct Phase {
    int64_t a, b, rows, cols, start;
  };
  std::vector<Phase> phases;
  int64_t start = 0;
  for (int64_t a = 0; a < g.s; ++a) {
    for (int64_t b = 0; b < g.s; ++b) {
      const int64_t rows = a < g.h ? (g.h - a + g.s - 1) / g.s : 0;
      const int64_t cols = b < g.w ? (g.w - b + g.s - 1) / g.s : 0;
      phases.push_back({a, b, rows, cols, start});
      start += g.n * rows * cols;
    }
  }
  auto locate = [&g, &phases](int64_t p, int64_t& n, int64_t& ih, int64_t& iw) {
    size_t f = 0;
    while (f + 1 < phases.size() && p >= phases[f + 1].start) ++f;
    const Phase& ph = phases[f];
    const int64_t q = p - ph.start, plane = ph.rows * ph.cols;
    n = q / plane;
    ih = ph.a + g.s * ((q % plane) / ph.cols);
    iw = ph.b + g.s * ((q % plane) % ph.cols);
  };
  auto fill = [&g, dy, &locate](int64_t p, const float** column, int64_t stride) {
    int64_t n, ih, iw;
    locate(p, n, ih, iw);
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t u = ih + g.ph - i;
      const bool row = u >= 0 && u % g.s == 0 && u / g.s < g.oh;
      for (int64_t j = 0; j < g.k; ++j) {
        const int64_t v = iw + g.pw - j;
        const bool inside = row && v >= 0 && v % g.s == 0 && v / g.s < g.ow;
        column[(i * g.k + j) * stride] =
            inside ? dy + ((n * g.oh + u / g.s) * g.ow + v / g.s) * g.co : nullptr;
      }
    }
  };
  auto dst = [&g, dx, &locate](int64_t p) {
    int64_t n, ih, iw;
    locate(p, n, ih, iw);
    return dx + ((n * g.h + ih) * g.w + iw) * g.ci;
  };
  Gather(pool, g.n * g.h * g.w, g.k * g.k, g.co, g.ci, wt, false, fill, dst);
}

// out[r][0 : V * kLanes] += sum over output pixels (rows [row_lo, row_hi) of the batch's
// output, columns valid for tap (i, j)) of x[tap's input pixel, c0 + r] * dy[pixel, o0 : ...].
// Not inlined: inside FilterGrad's loops GCC spilled six of AVX2's twelve accumulators to the
// stack in the pixel loop (filter gradient 52-64 GFLOP/s against the forward pass's 96-143 on
// a 2-core Zen 3); compiled alone, all stay in registers (32x32x64: 38.0 -> 24.2 ms).
template <int R, int V>
__attribute__((noinline)) void FilterTile(const Geometry& g, const float* x, const float* dy,
                                          int64_t i, int64_t j, int64_t c0, int64_t o0,
                                          int64_t row_lo, int64_t row_hi, int64_t q_lo,
                                          int64_t q_hi, float* out) {
  Vec acc[R][V];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) acc[r][v] = Load(out + r * g.co + v * kLanes);
  }
  for (int64_t row = row_lo; row < row_hi; ++row) {
    const int64_t n = row / g.oh, ih = (row % g.oh) * g.s + i - g.ph;
    if (ih < 0 || ih >= g.h) continue;
    const float* xp = x + ((n * g.h + ih) * g.w + q_lo * g.s + j - g.pw) * g.ci + c0;
    const float* dp = dy + (row * g.ow + q_lo) * g.co + o0;
    for (int64_t q = q_lo; q < q_hi; ++q, xp += g.s * g.ci, dp += g.co) {
      Vec dv[V];
      for (int v = 0; v < V; ++v) dv[v] = Load(dp + v * kLanes);
      for (int r = 0; r < R; ++r) {
        const float b = xp[r];
        for (int v = 0; v < V; ++v) acc[r][v] += b * dv[v];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < V; ++v) Store(out + r * g.co + v * kLanes, acc[r][v]);
  }
}

template <int R>
void FilterTileV(int vectors, const Geometry& g, const float* x, const float* dy, int64_t i,
                 int64_t j, int64_t c0, int64_t o0, int64_t row_lo, int64_t row_hi,
                 int64_t q_lo, int64_t q_hi, float* out) {
  switch (vectors) {
    case 1: return FilterTile<R, 1>(g, x, dy, i, j, c0, o0, row_lo, row_hi, q_lo, q_hi, out);
    case 2: return FilterTile<R, 2>(g, x, dy, i, j, c0, o0, row_lo, row_hi, q_lo, q_hi, out);
#if defined(__AVX512F__)
    case 3: return FilterTile<R, 3>(g, x, dy, i, j, c0, o0, row_lo, row_hi, q_lo, q_hi, out);
    case 4: return FilterTile<R, 4>(g, x, dy, i, j, c0, o0, row_lo, row_hi, q_lo, q_hi, out);
#endif
  }
}

void RunFilterTile(int rows, int vectors, const Geometry& g, const float* x, const float* dy,
                   int64_t i, int64_t j, int64_t c0, int64_t o0, int64_t row_lo,
                   int64_t row_hi, int64_t q_lo, int64_t q_hi, float* out) {
  switch (rows) {
#define MKLN_ROWS(R)                                                                    \
  case R:                                                                               \
    return FilterTileV<R>(vectors, g, x, dy, i, j, c0, o0, row_lo, row_hi, q_lo, q_hi, \
                          out);
    MKLN_ROWS(1) MKLN_ROWS(2) MKLN_ROWS(3) MKLN_ROWS(4) MKLN_ROWS(5) MKLN_ROWS(6)
#undef MKLN_ROWS
  }
}

void FilterGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                float* dw) {
  const int64_t size = g.k * g.k * g.ci * g.co;
  const int64_t rows = g.n * g.oh;
  if (rows == 0 || g.ow == 0) {  // no output pixels: nothing to sum
    std::fill(dw, dw + size, 0.0f);
    return;
  }
  // Fixed chunks of output rows, as many as 16 while their partial sums stay within 16 MiB.
  const int64_t chunks =
      std::max<int64_t>(1, std::min({rows, int64_t{16}, (int64_t{4} << 20) / size}));
  const int64_t column_blocks = (g.co + kColumns - 1) / kColumns;
  // Rows per pass: up to 256 output pixels, fewer for wide layers, so that a pass's x and dy
  // (~128 KiB) stay in L2 across its tiles (at 4x4x512, 256 pixels' x alone filled Zen 3's
  // 512 KiB L2).
  const int64_t pixels = std::clamp<int64_t>((int64_t{1} << 15) / (g.ci + kColumns), 32, 256);
  const int64_t pass = std::max<int64_t>(1, pixels / g.ow);
  // Merged kernel rows (see MergeRows): one tap j = 0 whose channels run over (j, c).
  const bool merge = MergeRows(g);
  const int64_t columns = merge ? 1 : g.k, depth = merge ? g.k * g.ci : g.ci;
  std::vector<float> partial(chunks * size, 0.0f);
  float* parts = partial.data();
  ParallelFor(pool, chunks * column_blocks, [&](int64_t item) {
    const int64_t chunk = item / column_blocks, o0 = (item % column_blocks) * kColumns;
    const int vectors = static_cast<int>(std::min(kColumns, g.co - o0) / kLanes);
    float* mine = parts + chunk * size;
    const int64_t r0 = chunk * rows / chunks, r1 = (chunk + 1) * rows / chunks;
    for (int64_t lo = r0; lo < r1; lo += pass) {
      const int64_t hi = std::min(r1, lo + pass);
      for (int64_t i = 0; i < g.k; ++i) {
        for (int64_t j = 0; j < columns; ++j) {
          const auto [q_lo, q_hi] = ValidRange(j, g.pw, g.s, g.w, g.ow);
          for (int64_t c0 = 0; c0 < depth; c0 += kR) {
            const int tile_rows = static_cast<int>(std::min<int64_t>(kR, depth - c0));
            float* out = mine + ((i * g.k + j) * g.ci + c0) * g.co + o0;
            RunFilterTile(tile_rows, vectors, g, x, dy, i, j, c0, o0, lo, hi, q_lo, q_hi, out);
          }
        }
      }
    }
  });
  // Chunk partials added in chunk order, split over the pool by ranges of weights.
  const int64_t span = 1 << 14;
  ParallelFor(pool, (size + span - 1) / span, [&](int64_t item) {
    const int64_t a = item * span, b = std::min(size, a + span);
    std::copy(parts + a, parts + b, dw + a);
    for (int64_t c = 1; c < chunks; ++c) {
      const float* __restrict part = parts + c * size;
      for (int64_t t = a; t < b; ++t) dw[t] += part[t];
    }
  });
}

// The geometry of one call from its operands' shapes (input, kernel (k, k, ci, co), output in
// the forward sense), checked so that a malformed call is an error rather than an
// out-of-bounds access.
ffi::Error MakeGeometry(ffi::Span<const int64_t> in, ffi::Span<const int64_t> kernel,
                        ffi::Span<const int64_t> out, int64_t stride, int64_t pad_h,
                        int64_t pad_w, bool input_channels_in_lanes, Geometry& g) {
  if (in.size() != 4 || kernel.size() != 4 || out.size() != 4) {
    return ffi::Error::InvalidArgument("dense conv: want NHWC input/output, (k, k, in, out) kernel");
  }
  g = Geometry{in[0],  in[1],  in[2],  in[3],  kernel[0], stride,
               pad_h,  pad_w,  out[1], out[2], out[3]};
  if (kernel[1] != g.k || kernel[2] != g.ci || kernel[3] != g.co || out[0] != g.n) {
    return ffi::Error::InvalidArgument("dense conv: input, kernel and output shapes disagree");
  }
  if (g.k <= 0 || g.s <= 0 || g.ph < 0 || g.pw < 0 || g.ph >= g.k || g.pw >= g.k) {
    return ffi::Error::InvalidArgument("dense conv: bad kernel, stride or padding");
  }
  if (g.co % kLanes != 0 || (input_channels_in_lanes && g.ci % kLanes != 0)) {
    return ffi::Error::InvalidArgument("dense conv: channel count not a multiple of the lanes");
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t pad_h,
                       int64_t pad_w, int64_t flip) {
  Geometry g;
  auto e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), stride, pad_h, pad_w,
                        false, g);
  if (e.failure()) return e;
  Forward(pool, g, x.typed_data(), w.typed_data(), flip != 0, y->typed_data());
  return ffi::Error::Success();
}

// wt: the kernel transposed per tap, (k, k, co, ci).
ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::F32> wt, ffi::ResultBuffer<ffi::F32> dx,
                         int64_t stride, int64_t pad_h, int64_t pad_w) {
  const auto t = wt.dimensions();
  if (t.size() != 4) return ffi::Error::InvalidArgument("dense conv: want a (k, k, out, in) kernel");
  const int64_t kernel[4] = {t[0], t[1], t[3], t[2]};
  Geometry g;
  auto e = MakeGeometry(dx->dimensions(), ffi::Span<const int64_t>(kernel, 4), dy.dimensions(),
                        stride, pad_h, pad_w, true, g);
  if (e.failure()) return e;
  InputGrad(pool, g, dy.typed_data(), wt.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

ffi::Error FilterGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t stride, int64_t pad_h, int64_t pad_w) {
  Geometry g;
  auto e = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), stride, pad_h, pad_w,
                        false, g);
  if (e.failure()) return e;
  FilterGrad(pool, g, x.typed_data(), dy.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnDenseForward, ForwardImpl,
                              MKLN_CONV_BINDING.Attr<int64_t>("flip"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnDenseInputGrad, InputGradImpl, MKLN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MklnDenseFilterGrad, FilterGradImpl, MKLN_CONV_BINDING);

// The channel multiple the kernels need (output channels; input channels for the input
// gradient): the vector width in floats this library was built for.
extern "C" int MklnDenseLanes() { return kLanes; }
