// Training-mode BatchNorm (+ residual add) (+ ReLU) for channels-last float32 or
// bfloat16 tensors on CPU, forward and gradient, as two TensorFlow custom ops.
// bfloat16 tensors are read and written as bfloat16 (half the traffic) and
// computed in float32, with float32 statistics, as mixed precision asks.
//
// Why: in a float32 ResNet training step on CPU about a quarter of the time is
// memory-bound work between the convolutions (benchmarks/bench_memory_bound.py).
// TensorFlow runs BatchNorm + add + ReLU as three ops (oneDNN fuses only
// BatchNorm + ReLU on CPU) and their gradients as three more; here each
// direction is one op making the fewest passes over memory:
//   forward:  statistics (read x), then y = act((x - mean) * scale + beta [+ residual])
//   gradient: dz = dy * (y > 0) and the two channel sums (read dy, y, x; write dz),
//             then dx = a * dz + b * x + k (read dz, x; write dx).
// dz doubles as the residual's gradient. Built and loaded by keras_resnet/contrib/cpu (opt-in: keras_resnet.contrib.cpu.accelerate).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

using namespace tensorflow;

REGISTER_OP("KerasResnetBatchNormAct")
    .Input("x: T")
    .Input("residual: T")
    .Input("gamma: float")
    .Input("beta: float")
    .Output("y: T")
    .Output("batch_mean: float")
    .Output("batch_variance: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("epsilon: float = 0.001")
    .Attr("has_residual: bool = false")
    .Attr("relu: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return OkStatus();
    });

REGISTER_OP("KerasResnetBatchNormActGrad")
    .Input("dy: T")
    .Input("x: T")
    .Input("y: T")
    .Input("gamma: float")
    .Input("batch_mean: float")
    .Input("batch_variance: float")
    .Output("dx: T")
    .Output("d_residual: T")
    .Output("d_gamma: float")
    .Output("d_beta: float")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Attr("epsilon: float = 0.001")
    .Attr("has_residual: bool = false")
    .Attr("relu: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      bool has_residual;
      TF_RETURN_IF_ERROR(c->GetAttr("has_residual", &has_residual));
      c->set_output(1, has_residual ? c->input(1) : c->Vector(0));
      c->set_output(2, c->input(3));
      c->set_output(3, c->input(3));
      return OkStatus();
    });

namespace {

constexpr int64_t kChunk = 64;  // rows summed in float before joining the double totals

// Element access for the two storage types: float as is, bfloat16 as its raw
// 16 bits (the top half of a float). Plain integer arithmetic, so the loops
// below vectorise for both; Eigen's bfloat16 conversions do not.
inline float Load(float v) { return v; }
inline float Load(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline void Store(float* p, float v) { *p = v; }
// Round to nearest even, as TensorFlow's (Eigen's) float -> bfloat16 cast: a NaN
// becomes the quiet NaN of its sign, a finite value past bf16's range infinity.
// (Denormals are kept; CPUs' conversion instructions may flush them to zero.)
inline void Store(uint16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
  *p = static_cast<uint16_t>(v != v ? nan : rounded);
}

// TensorFlow's element type -> the storage type the loops use.
template <typename T> struct Storage { using type = T; };
template <> struct Storage<bfloat16> { using type = uint16_t; };

// Runs fn(block, row_begin, row_end) over `blocks` contiguous row ranges in the
// device's thread pool.
template <typename Fn>
void ForBlocks(OpKernelContext* ctx, int64_t rows, int64_t channels, int blocks, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t per = (rows + blocks - 1) / blocks;
  Shard(blocks, workers, blocks, per * channels * 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t r0 = b * per, r1 = std::min(rows, r0 + per);
      if (r0 < r1) fn(static_cast<int>(b), r0, r1);
    }
  });
}


// The four row loops, over rows [r0, r1) of a [rows, C] matrix of S (float, or
// bfloat16 bits). `__restrict__` lets the compiler vectorise without run-time
// alias checks; in-place InputGradRows (z == out) is safe because each element
// is read before it is written.
template <typename S>
void MomentsRows(const S* __restrict__ x, const float* __restrict__ shift, int64_t C,
                 int64_t r0, int64_t r1, double* __restrict__ out) {
  std::vector<float> fs_v(C), fq_v(C);
  float* __restrict__ fs = fs_v.data();
  float* __restrict__ fq = fq_v.data();
  for (int64_t r = r0; r < r1; r += kChunk) {
    std::fill(fs, fs + C, 0.f);
    std::fill(fq, fq + C, 0.f);
    const int64_t re = std::min(r1, r + kChunk);
    for (int64_t i = r; i < re; ++i) {
      const S* __restrict__ xi = x + i * C;
      for (int64_t c = 0; c < C; ++c) {
        const float d = Load(xi[c]) - shift[c];
        fs[c] += d;
        fq[c] += d * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) { out[c] += fs[c]; out[C + c] += fq[c]; }
  }
}

template <typename S>
void GradSumsRows(const S* __restrict__ dy, const S* __restrict__ x,
                  const S* __restrict__ y, S* __restrict__ dz_out,
                  const float* __restrict__ mean, int64_t C, int64_t r0, int64_t r1,
                  double* __restrict__ out) {
  std::vector<float> fs_v(C), fq_v(C);
  float* __restrict__ fs = fs_v.data();
  float* __restrict__ fq = fq_v.data();
  for (int64_t r = r0; r < r1; r += kChunk) {
    std::fill(fs, fs + C, 0.f);
    std::fill(fq, fq + C, 0.f);
    const int64_t re = std::min(r1, r + kChunk);
    for (int64_t i = r; i < re; ++i) {
      const S* __restrict__ di = dy + i * C;
      const S* __restrict__ xi = x + i * C;
      if (y) {
        const S* __restrict__ yi = y + i * C;
        S* __restrict__ zi = dz_out + i * C;
        for (int64_t c = 0; c < C; ++c) {
          // Masking is exact in either type: dz is dy or zero.
          const S dzs = Load(yi[c]) > 0.f ? di[c] : S(0);
          zi[c] = dzs;
          const float d = Load(dzs);
          fs[c] += d;
          fq[c] += d * (Load(xi[c]) - mean[c]);
        }
      } else {
        if (dz_out) std::memcpy(dz_out + i * C, di, C * sizeof(S));
        for (int64_t c = 0; c < C; ++c) {
          const float d = Load(di[c]);
          fs[c] += d;
          fq[c] += d * (Load(xi[c]) - mean[c]);
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) { out[c] += fs[c]; out[C + c] += fq[c]; }
  }
}

// ReLU as std::max(v, 0.f), which is (v < 0 ? 0 : v): a NaN passes through, as
// through TensorFlow's Relu, instead of being silently zeroed.
// Centre first, then scale: x * scale + (beta - mean * scale) would cancel
// catastrophically when |mean| >> std, as TensorFlow's kernels avoid too.
template <typename S>
void NormalizeRows(const S* __restrict__ x, const S* __restrict__ res,
                   const float* __restrict__ mean, const float* __restrict__ scale,
                   const float* __restrict__ offset,
                   S* __restrict__ y, int64_t C, int64_t r0, int64_t r1, bool relu) {
  for (int64_t i = r0; i < r1; ++i) {
    const S* __restrict__ xi = x + i * C;
    S* __restrict__ yi = y + i * C;
    if (res) {
      const S* __restrict__ ri = res + i * C;
      if (relu) {
        for (int64_t c = 0; c < C; ++c)
          Store(yi + c, std::max((Load(xi[c]) - mean[c]) * scale[c] + offset[c] + Load(ri[c]), 0.f));
      } else {
        for (int64_t c = 0; c < C; ++c)
          Store(yi + c, (Load(xi[c]) - mean[c]) * scale[c] + offset[c] + Load(ri[c]));
      }
    } else if (relu) {
      for (int64_t c = 0; c < C; ++c)
        Store(yi + c, std::max((Load(xi[c]) - mean[c]) * scale[c] + offset[c], 0.f));
    } else {
      for (int64_t c = 0; c < C; ++c) Store(yi + c, (Load(xi[c]) - mean[c]) * scale[c] + offset[c]);
    }
  }
}

template <typename S>
void InputGradRows(const S* z, const S* __restrict__ x, const float* __restrict__ mean,
                   const float* __restrict__ a, const float* __restrict__ b,
                   const float* __restrict__ k, S* out,
                   int64_t C, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    const S* zi = z + i * C;
    const S* __restrict__ xi = x + i * C;
    S* oi = out + i * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c)
      Store(oi + c, a[c] * Load(zi[c]) + b[c] * (Load(xi[c]) - mean[c]) + k[c]);
  }
}

int NumBlocks(OpKernelContext* ctx, int64_t rows) {
  int threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows / kChunk, 4 * threads)));
}

// The attributes both ops share.
class BatchNormActBase : public OpKernel {
 public:
  explicit BatchNormActBase(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(c, c->GetAttr("has_residual", &has_residual_));
    OP_REQUIRES_OK(c, c->GetAttr("relu", &relu_));
  }

 protected:
  float epsilon_;
  bool has_residual_, relu_;
};

// Channel c's two totals over the per-block partial sums laid out as
// [block][sum | sum of products][channel].
void JoinBlocks(const std::vector<double>& sums, int blocks, int64_t C, int64_t c,
                double* s, double* q) {
  *s = 0;
  *q = 0;
  for (int b = 0; b < blocks; ++b) {
    *s += sums[2 * b * C + c];
    *q += sums[(2 * b + 1) * C + c];
  }
}

// A tensor's elements as the loops' storage type.
template <typename T>
const typename Storage<T>::type* In(const Tensor& t) {
  return reinterpret_cast<const typename Storage<T>::type*>(t.flat<T>().data());
}
template <typename T>
typename Storage<T>::type* Out(Tensor* t) {
  return reinterpret_cast<typename Storage<T>::type*>(t->flat<T>().data());
}

template <typename T>
class BatchNormActOp : public BatchNormActBase {
 public:
  using BatchNormActBase::BatchNormActBase;
  using S = typename Storage<T>::type;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& residual = ctx->input(1);
    const Tensor& gamma = ctx->input(2);
    const Tensor& beta = ctx->input(3);
    OP_REQUIRES(ctx, x.dims() >= 2, errors::InvalidArgument("x must be at least 2-D"));
    const int64_t C = x.dim_size(x.dims() - 1);
    const int64_t rows = C ? x.NumElements() / C : 0;
    OP_REQUIRES(ctx, gamma.NumElements() == C && beta.NumElements() == C,
                errors::InvalidArgument("gamma and beta need ", C, " elements"));
    if (has_residual_) {
      OP_REQUIRES(ctx, residual.shape() == x.shape(),
                  errors::InvalidArgument("residual shape ", residual.shape().DebugString(),
                                          " != x shape ", x.shape().DebugString()));
    }
    Tensor* y = nullptr;
    Tensor* mean_t = nullptr;
    Tensor* var_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &var_t));
    const S* xp = In<T>(x);
    const S* rp = has_residual_ ? In<T>(residual) : nullptr;
    S* yp = Out<T>(y);

    // Pass 1: per-channel sums of (x - shift) and its square.
    const int blocks = NumBlocks(ctx, rows);
    std::vector<double> sums(2 * blocks * C, 0.0);
    // Shifting by the first row keeps E[d^2] - E[d]^2 free of cancellation.
    std::vector<float> shift_v(C, 0.f);
    for (int64_t c = 0; rows && c < C; ++c) shift_v[c] = Load(xp[c]);
    const float* shift = shift_v.data();
    ForBlocks(ctx, rows, C, blocks, [&](int b, int64_t r0, int64_t r1) {
      MomentsRows(xp, shift, C, r0, r1, sums.data() + 2 * b * C);
    });
    std::vector<float> scale(C), offset(C);
    const float* g = gamma.flat<float>().data();
    const float* be = beta.flat<float>().data();
    float* mp = mean_t->flat<float>().data();
    float* vp = var_t->flat<float>().data();
    for (int64_t c = 0; c < C; ++c) {
      double s, q;
      JoinBlocks(sums, blocks, C, c, &s, &q);
      double m = rows ? s / rows : std::nan("");
      double var = rows ? std::max(0.0, q / rows - m * m) : std::nan("");
      double mean = m + shift[c];
      mp[c] = static_cast<float>(mean);
      vp[c] = static_cast<float>(var);
      double inv = 1.0 / std::sqrt(var + epsilon_);
      scale[c] = static_cast<float>(g[c] * inv);
      offset[c] = be[c];
    }
    // Pass 2: y = act((x - mean) * scale + beta (+ residual)).
    const float* sc = scale.data();
    const float* of = offset.data();
    const bool relu = relu_;
    ForBlocks(ctx, rows, C, NumBlocks(ctx, rows), [&](int, int64_t r0, int64_t r1) {
      NormalizeRows(xp, rp, mp, sc, of, yp, C, r0, r1, relu);
    });
  }
};

template <typename T>
class BatchNormActGradOp : public BatchNormActBase {
 public:
  using BatchNormActBase::BatchNormActBase;
  using S = typename Storage<T>::type;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& y = ctx->input(2);
    const Tensor& gamma = ctx->input(3);
    const Tensor& mean_t = ctx->input(4);
    const Tensor& var_t = ctx->input(5);
    OP_REQUIRES(ctx, x.dims() >= 2, errors::InvalidArgument("x must be at least 2-D"));
    const int64_t C = x.dim_size(x.dims() - 1);
    const int64_t rows = C ? x.NumElements() / C : 0;
    OP_REQUIRES(ctx, dy.shape() == x.shape(), errors::InvalidArgument("dy shape != x shape"));
    OP_REQUIRES(ctx, gamma.NumElements() == C && mean_t.NumElements() == C &&
                var_t.NumElements() == C,
                errors::InvalidArgument("gamma, mean and variance need ", C, " elements"));
    OP_REQUIRES(ctx, !relu_ || y.shape() == x.shape(), errors::InvalidArgument("y shape != x shape"));
    Tensor* dx = nullptr;
    Tensor* dres = nullptr;
    Tensor* dg = nullptr;
    Tensor* db = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
        1, has_residual_ ? x.shape() : TensorShape({0}), &dres));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &dg));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({C}), &db));
    const S* dyp = In<T>(dy);
    const S* xp = In<T>(x);
    const S* yp = In<T>(y);
    const float* mp = mean_t.flat<float>().data();
    S* dxp = Out<T>(dx);
    // dz, the gradient before the ReLU (and of the residual), is written once in
    // pass 1 and read back in pass 2: into d_residual, or into dx itself.
    S* dzp = has_residual_ ? Out<T>(dres) : dxp;
    const bool relu = relu_;
    const bool store_dz = relu || has_residual_;

    const int blocks = NumBlocks(ctx, rows);
    std::vector<double> sums(2 * blocks * C, 0.0);
    ForBlocks(ctx, rows, C, blocks, [&](int b, int64_t r0, int64_t r1) {
      GradSumsRows(dyp, xp, relu ? yp : nullptr, store_dz ? dzp : nullptr, mp, C, r0, r1,
                   sums.data() + 2 * b * C);
    });
    const float* g = gamma.flat<float>().data();
    const float* vp = var_t.flat<float>().data();
    float* dgp = dg->flat<float>().data();
    float* dbp = db->flat<float>().data();
    std::vector<float> ka(C), kb(C), kc(C);
    for (int64_t c = 0; c < C; ++c) {
      double s, q;
      JoinBlocks(sums, blocks, C, c, &s, &q);
      double inv = 1.0 / std::sqrt(static_cast<double>(vp[c]) + epsilon_);
      dbp[c] = static_cast<float>(s);
      dgp[c] = static_cast<float>(q * inv);
      // dx = a*dz + b*(x-m) + k, with a = gamma*inv, b = -a*inv^2*mean(dz*(x-m)), k = -a*mean(dz)
      double a = g[c] * inv;
      double bcoef = -a * inv * inv * q / rows;
      ka[c] = static_cast<float>(a);
      kb[c] = static_cast<float>(bcoef);
      kc[c] = static_cast<float>(-a * s / rows);
    }
    const float* A = ka.data();
    const float* B = kb.data();
    const float* K = kc.data();
    const S* src = store_dz ? dzp : dyp;
    ForBlocks(ctx, rows, C, NumBlocks(ctx, rows), [&](int, int64_t r0, int64_t r1) {
      InputGradRows(src, xp, mp, A, B, K, dxp, C, r0, r1);
    });
  }
};

}  // namespace

#define REGISTER(T)                                                                          \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("KerasResnetBatchNormAct").Device(DEVICE_CPU).TypeConstraint<T>("T"),             \
      BatchNormActOp<T>);                                                                    \
  REGISTER_KERNEL_BUILDER(                                                                   \
      Name("KerasResnetBatchNormActGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
      BatchNormActGradOp<T>);
REGISTER(float)
REGISTER(bfloat16)
#undef REGISTER
