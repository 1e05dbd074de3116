// Winograd F(4x4, 3x3) transforms for float32 3x3 stride-1 "same" convolutions
// on CPU, channels-last, as two TensorFlow custom ops. keras_resnet/kernels.py
// puts them around a batched matmul:
//
//   V = WinogradInput(x)            [36, tiles, C]   (B^T d B of every 6x6 input tile)
//   U = WinogradFilter(w, scale)    [36, C, K]       (G w G^T, times a folded BN's scale)
//   M = matmul(V, U)                [36, tiles, K]   (oneDNN's batched GEMM)
//   y = WinogradOutput(M, bias)     [N, H, W, K]     (A^T m A of every tile, + bias, ReLU)
//
// Why: a 3x3 convolution makes 9 multiply-adds per output and input channel;
// F(4x4, 3x3) makes 36 per 16 outputs, i.e. 2.25, so the GEMM does 4x fewer
// FLOPs. oneDNN has a Winograd convolution but TensorFlow never selects it;
// its direct convolution already runs near this CPU's matmul peak, so this is
// the only way for inference to go faster than "100% of peak" on those layers.
// Matrices from Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks" (2016), interpolation points 0, +-1, +-2, infinity.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

using namespace tensorflow;

// The transforms are arithmetic-bound at 256-bit vectors (GCC's default width
// on this class of CPU), so ask for 512 where the -march has AVX-512.
#if defined(__AVX512F__)
#pragma GCC target("prefer-vector-width=512")
#endif

REGISTER_OP("KerasResnetWinogradInput")
    .Input("x: float")
    .Output("v: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      c->set_output(0, c->MakeShape({36, c->UnknownDim(), c->Dim(x, 3)}));
      return OkStatus();
    });

// U = G w G^T for every (input, output) channel pair, each output channel k
// scaled by scale[k] when `scale` is not empty: an inference BatchNorm folded
// into the kernel (w * scale) without a separate pass over the weights.
REGISTER_OP("KerasResnetWinogradFilter")
    .Input("kernel: float")
    .Input("scale: float")
    .Output("u: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle w;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &w));
      c->set_output(0, c->MakeShape({36, c->Dim(w, 2), c->Dim(w, 3)}));
      return OkStatus();
    });

// `x` is the convolution's input, read for its shape only (N, H, W), so the
// op works for any image size, including sizes known only at run time.
// `residual` (when has_residual) is added before the ReLU: a post-activation
// block's relu(shortcut + conv(y) + bias) in one pass.
REGISTER_OP("KerasResnetWinogradOutput")
    .Input("m: float")
    .Input("bias: float")
    .Input("x: float")
    .Input("residual: float")
    .Output("y: float")
    .Attr("has_residual: bool = false")
    .Attr("relu: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle m, x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &m));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &x));
      c->set_output(0, c->MakeShape({c->Dim(x, 0), c->Dim(x, 1), c->Dim(x, 2), c->Dim(m, 2)}));
      return OkStatus();
    });

namespace {

constexpr int kBlock = 16;  // channels per inner loop: one AVX-512 register of floats
// The 36 transform outputs go to (or come from) 36 planes whose distance is a
// multiple of 4 KiB for most shapes, so interleaved accesses to all 36 collide in
// the same L1 sets. Each op therefore moves whole runs of a group of tiles (or
// channels) per plane through a staging buffer whose rows are kPad floats longer
// than the data (breaking the power-of-two stride), and touches the planes
// themselves only with long contiguous copies. Measured 3x faster on the filter
// transform at 512 channels.
constexpr int64_t kPad = 16;
constexpr int64_t kRun = 2048;  // floats per plane per group: 8 KiB runs

inline int64_t Tiles(int64_t size) { return (size + 3) / 4; }

// r = B^T d for six vectors d[0..5] of n channels (strides in floats).
inline void InputRows(const float* __restrict__ d, int64_t ds, float* __restrict__ r, int64_t rs) {
  for (int c = 0; c < kBlock; ++c) {
    const float d0 = d[c], d1 = d[ds + c], d2 = d[2 * ds + c], d3 = d[3 * ds + c],
                d4 = d[4 * ds + c], d5 = d[5 * ds + c];
    r[c] = 4.f * d0 - 5.f * d2 + d4;
    r[rs + c] = -4.f * (d1 + d2) + d3 + d4;
    r[2 * rs + c] = 4.f * (d1 - d2) - d3 + d4;
    r[3 * rs + c] = 2.f * (d3 - d1) - d2 + d4;
    r[4 * rs + c] = 2.f * (d1 - d3) - d2 + d4;
    r[5 * rs + c] = 4.f * d1 - 5.f * d3 + d5;
  }
}

// o = A^T m for six vectors m[0..5] -> four.
inline void OutputRows(const float* __restrict__ m, int64_t ms, float* __restrict__ o, int64_t os) {
  for (int c = 0; c < kBlock; ++c) {
    const float m0 = m[c], m1 = m[ms + c], m2 = m[2 * ms + c], m3 = m[3 * ms + c],
                m4 = m[4 * ms + c], m5 = m[5 * ms + c];
    const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    o[c] = m0 + s12 + s34;
    o[os + c] = d12 + 2.f * d34;
    o[2 * os + c] = s12 + 4.f * s34;
    o[3 * os + c] = d12 + 8.f * d34 + m5;
  }
}

class WinogradInputOp : public OpKernel {
 public:
  explicit WinogradInputOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES(ctx, x.dims() == 4,
                errors::InvalidArgument("WinogradInput expects NHWC, got shape ",
                                        x.shape().DebugString()));
    const int64_t n = x.dim_size(0), h = x.dim_size(1), w = x.dim_size(2), ch = x.dim_size(3);
    const int64_t th = Tiles(h), tw = Tiles(w), tiles = n * th * tw;
    Tensor* v = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({36, tiles, ch}), &v));
    if (tiles == 0 || ch == 0) return;
    const float* src = x.flat<float>().data();
    float* dst = v->flat<float>().data();
    const int64_t plane = tiles * ch;  // floats between two of the 36 outputs
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    // Tiles go in groups whose 36 transformed rows are staged in a buffer and
    // then written as 36 contiguous runs: 36 scattered 64-byte writes per tile
    // were measured 2-3x slower (too many write streams).
    const int64_t group = std::max<int64_t>(1, kRun / ch);
    const int64_t row = group * ch + kPad;  // staging stride between planes
    const int64_t groups = (tiles + group - 1) / group;
    Shard(workers->NumThreads(), workers, groups, group * 36 * ch * 8, [&](int64_t g0, int64_t g1) {
      alignas(64) float d[36 * kBlock];
      alignas(64) float r[36 * kBlock];
      std::vector<float> staged(36 * row);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t first = g * group, count = std::min(group, tiles - first);
        for (int64_t u = 0; u < count; ++u) {
          const int64_t t = first + u;
          const int64_t b = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
          const int64_t y0 = 4 * ty - 1, x0 = 4 * tx - 1;  // "same" padding of 1
          for (int64_t c0 = 0; c0 < ch; c0 += kBlock) {
            const int nc = static_cast<int>(std::min<int64_t>(kBlock, ch - c0));
            // Gather the 6x6 tile (zeros outside the image).
            for (int i = 0; i < 6; ++i) {
              const int64_t yy = y0 + i;
              for (int j = 0; j < 6; ++j) {
                const int64_t xx = x0 + j;
                float* out = d + (i * 6 + j) * kBlock;
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) {
                  for (int c = 0; c < kBlock; ++c) out[c] = 0.f;
                } else {
                  const float* in = src + ((b * h + yy) * w + xx) * ch + c0;
                  if (nc == kBlock) {
                    for (int c = 0; c < kBlock; ++c) out[c] = in[c];  // one vector load
                  } else {
                    for (int c = 0; c < kBlock; ++c) out[c] = c < nc ? in[c] : 0.f;
                  }
                }
              }
            }
            // Columns of each row, then rows of each column: B^T d B.
            for (int i = 0; i < 6; ++i) InputRows(d + i * 6 * kBlock, kBlock, r + i * 6 * kBlock, kBlock);
            for (int j = 0; j < 6; ++j) InputRows(r + j * kBlock, 6 * kBlock, d + j * kBlock, 6 * kBlock);
            for (int p = 0; p < 36; ++p) {
              float* out = staged.data() + p * row + u * ch + c0;
              const float* in = d + p * kBlock;
              for (int c = 0; c < nc; ++c) out[c] = in[c];
            }
          }
        }
        for (int p = 0; p < 36; ++p) {
          std::memcpy(dst + p * plane + first * ch, staged.data() + p * row,
                      sizeof(float) * count * ch);
        }
      }
    });
  }
};

class WinogradOutputOp : public OpKernel {
 public:
  explicit WinogradOutputOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("relu", &relu_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("has_residual", &has_residual_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& m = ctx->input(0);
    const Tensor& bias = ctx->input(1);
    OP_REQUIRES(ctx, m.dims() == 3 && m.dim_size(0) == 36,
                errors::InvalidArgument("WinogradOutput expects [36, tiles, K], got shape ",
                                        m.shape().DebugString()));
    const Tensor& x = ctx->input(2);
    OP_REQUIRES(ctx, x.dims() == 4,
                errors::InvalidArgument("WinogradOutput expects an NHWC x, got shape ",
                                        x.shape().DebugString()));
    const int64_t tiles = m.dim_size(1), k = m.dim_size(2);
    const int64_t n = x.dim_size(0), h = x.dim_size(1), w = x.dim_size(2);
    const int64_t th = Tiles(h), tw = Tiles(w);
    OP_REQUIRES(ctx, tiles == n * th * tw,
                errors::InvalidArgument("WinogradOutput: ", tiles, " tiles do not fit ", n,
                                        " images of ", h, "x", w));
    OP_REQUIRES(ctx, bias.dims() == 1 && bias.dim_size(0) == k,
                errors::InvalidArgument("WinogradOutput: bias must have ", k, " values, got ",
                                        bias.shape().DebugString()));
    const Tensor& residual = ctx->input(3);
    OP_REQUIRES(ctx, !has_residual_ || residual.shape() == TensorShape({n, h, w, k}),
                errors::InvalidArgument("WinogradOutput: residual must have shape ",
                                        TensorShape({n, h, w, k}).DebugString(), ", got ",
                                        residual.shape().DebugString()));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, h, w, k}), &y));
    if (tiles == 0 || k == 0) return;
    const float* src = m.flat<float>().data();
    const float* bias_data = bias.flat<float>().data();
    float* dst = y->flat<float>().data();
    const int64_t plane = tiles * k;
    const float* res = has_residual_ ? residual.flat<float>().data() : nullptr;
    const bool relu = relu_;
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t group = std::max<int64_t>(1, kRun / k);
    const int64_t row = group * k + kPad;
    const int64_t groups = (tiles + group - 1) / group;
    Shard(workers->NumThreads(), workers, groups, group * 36 * k * 8, [&](int64_t g0, int64_t g1) {
      alignas(64) float mm[36 * kBlock];
      alignas(64) float r[24 * kBlock];
      alignas(64) float o[16 * kBlock];
      std::vector<float> staged(36 * row);
      for (int64_t g = g0; g < g1; ++g) {
       const int64_t first = g * group, count = std::min(group, tiles - first);
       for (int p = 0; p < 36; ++p) {
         std::memcpy(staged.data() + p * row, src + p * plane + first * k, sizeof(float) * count * k);
       }
       for (int64_t u = 0; u < count; ++u) {
        const int64_t t = first + u;
        const int64_t b = t / (th * tw), ty = (t / tw) % th, tx = t % tw;
        for (int64_t c0 = 0; c0 < k; c0 += kBlock) {
          const int nc = static_cast<int>(std::min<int64_t>(kBlock, k - c0));
          for (int p = 0; p < 36; ++p) {
            const float* in = staged.data() + p * row + u * k + c0;
            float* out = mm + p * kBlock;
            if (nc == kBlock) {
              for (int c = 0; c < kBlock; ++c) out[c] = in[c];
            } else {  // a channel tail: the unused lanes are zero, never stale stack
              for (int c = 0; c < kBlock; ++c) out[c] = c < nc ? in[c] : 0.f;
            }
          }
          // A^T m A: rows of each column (6x6 -> 4x6), then columns of each row (-> 4x4).
          for (int j = 0; j < 6; ++j) OutputRows(mm + j * kBlock, 6 * kBlock, r + j * kBlock, 6 * kBlock);
          for (int i = 0; i < 4; ++i) OutputRows(r + i * 6 * kBlock, kBlock, o + i * 4 * kBlock, kBlock);
          for (int i = 0; i < 4; ++i) {
            const int64_t yy = 4 * ty + i;
            if (yy >= h) break;
            for (int j = 0; j < 4; ++j) {
              const int64_t xx = 4 * tx + j;
              if (xx >= w) break;
              float* in = o + (i * 4 + j) * kBlock;
              const int64_t at = ((b * h + yy) * w + xx) * k + c0;
              float* out = dst + at;
              if (res != nullptr) {
                for (int c = 0; c < nc; ++c) in[c] += res[at + c];
              }
              if (relu) {
                for (int c = 0; c < nc; ++c) out[c] = std::max(in[c] + bias_data[c0 + c], 0.f);
              } else {
                for (int c = 0; c < nc; ++c) out[c] = in[c] + bias_data[c0 + c];
              }
            }
          }
        }
       }
      }
    });
  }

 private:
  bool relu_, has_residual_;
};

// u = (G w G^T) * scale for one block of kBlock output channels: w = taps[i*3+j].
inline void FilterBlock(const float (*__restrict__ taps)[kBlock], const float* __restrict__ scale,
                        float (*__restrict__ u)[kBlock]) {
  // G (6x3), Lavin & Gray's F(4x4, 3x3).
  constexpr float G[6][3] = {{0.25f, 0.f, 0.f},
                             {-1.f / 6, -1.f / 6, -1.f / 6},
                             {-1.f / 6, 1.f / 6, -1.f / 6},
                             {1.f / 24, 1.f / 12, 1.f / 6},
                             {1.f / 24, -1.f / 12, 1.f / 6},
                             {0.f, 0.f, 1.f}};
  float t[6][3][kBlock];
  for (int a = 0; a < 6; ++a)
    for (int j = 0; j < 3; ++j)
      for (int l = 0; l < kBlock; ++l)
        t[a][j][l] = G[a][0] * taps[j][l] + G[a][1] * taps[3 + j][l] + G[a][2] * taps[6 + j][l];
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b)
      for (int l = 0; l < kBlock; ++l)
        u[a * 6 + b][l] = t[a][0][l] * G[b][0] + t[a][1][l] * G[b][1] + t[a][2][l] * G[b][2];
  if (scale != nullptr)
    for (int q = 0; q < 36; ++q)
      for (int l = 0; l < kBlock; ++l) u[q][l] *= scale[l];
}

class WinogradFilterOp : public OpKernel {
 public:
  explicit WinogradFilterOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& kernel = ctx->input(0);
    const Tensor& scale = ctx->input(1);
    OP_REQUIRES(ctx, kernel.dims() == 4 && kernel.dim_size(0) == 3 && kernel.dim_size(1) == 3,
                errors::InvalidArgument("WinogradFilter expects a [3, 3, C, K] kernel, got shape ",
                                        kernel.shape().DebugString()));
    const int64_t ch = kernel.dim_size(2), k = kernel.dim_size(3);
    OP_REQUIRES(ctx, scale.NumElements() == 0 || (scale.dims() == 1 && scale.dim_size(0) == k),
                errors::InvalidArgument("WinogradFilter: scale must be empty or have ", k,
                                        " values, got ", scale.shape().DebugString()));
    Tensor* u = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({36, ch, k}), &u));
    if (ch == 0 || k == 0) return;
    const float* w = kernel.flat<float>().data();
    const float* s = scale.NumElements() ? scale.flat<float>().data() : nullptr;
    float* dst = u->flat<float>().data();
    const int64_t tap = ch * k;  // floats between two of the 9 kernel taps / 36 outputs
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t group = std::max<int64_t>(1, kRun / k);  // input channels per run
    const int64_t row = group * k + kPad;
    const int64_t groups = (ch + group - 1) / group;
    Shard(workers->NumThreads(), workers, groups, group * 36 * k * 4, [&](int64_t g0, int64_t g1) {
      alignas(64) float taps[9][kBlock];
      alignas(64) float sc[kBlock];
      alignas(64) float out_block[36][kBlock];
      std::vector<float> staged(36 * row);
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t first = g * group, count = std::min(group, ch - first);
        for (int64_t u = 0; u < count; ++u) {
          const int64_t c = first + u;
          for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
            const int nk = static_cast<int>(std::min<int64_t>(kBlock, k - k0));
            // The 9 taps of this (c, k0) block, zero-padded to a full vector.
            for (int q = 0; q < 9; ++q) {
              const float* in = w + q * tap + c * k + k0;
              for (int l = 0; l < kBlock; ++l) taps[q][l] = l < nk ? in[l] : 0.f;
            }
            if (s != nullptr) {
              for (int l = 0; l < kBlock; ++l) sc[l] = l < nk ? s[k0 + l] : 0.f;
            }
            FilterBlock(taps, s != nullptr ? sc : nullptr, out_block);
            for (int q = 0; q < 36; ++q) {
              float* out = staged.data() + q * row + u * k + k0;
              for (int l = 0; l < nk; ++l) out[l] = out_block[q][l];
            }
          }
        }
        for (int p = 0; p < 36; ++p) {
          std::memcpy(dst + p * tap + first * k, staged.data() + p * row, sizeof(float) * count * k);
        }
      }
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("KerasResnetWinogradInput").Device(DEVICE_CPU), WinogradInputOp);
REGISTER_KERNEL_BUILDER(Name("KerasResnetWinogradOutput").Device(DEVICE_CPU), WinogradOutputOp);
REGISTER_KERNEL_BUILDER(Name("KerasResnetWinogradFilter").Device(DEVICE_CPU), WinogradFilterOp);
