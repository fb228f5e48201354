// The lanes test: runs the per-task algorithms of csrc/kernels/mlp/task.h with
// N CPU threads per task as its lanes (lane() = thread index, count() = N,
// sync() = a barrier, leader() = lane 0, kSerial = false), so the code the GPU
// takes when lanes are many (the register-blocked parallel layers, every
// lanes.sync()) runs on the CPU, and compares every output and gradient with
// the one-lane SerialLanes run (the CPU's per-task path) in float64. It also
// runs the CPU's task packs (csrc/kernels/mlp/pack.h: the same algorithm with
// T = TaskPack<double, W>, one task per SIMD lane) with W = 2 and 8, so that
// packs that are full, partial and several per call are compared too.
//
// Built by tests/test_lanes.py three times: plain (g++ -O1 -std=c++17
// -pthread -fopenmp-simd -I csrc), with -fsanitize=thread, where a data race
// between lanes (a missing lanes.sync()) is a race between the threads of a
// GPU block, and with -fsanitize=address,undefined (bad labels must never be
// used as an index).
//
// Clean cases must give finite results: scratch and outputs start as NaN, so
// a read of unwritten scratch or an output left unwritten shows. NaN cases
// (one NaN in a parameter, input, target, rate or upstream gradient) must be
// NaN exactly where the serial run is. Tolerance 1e-12 relative to each
// array's largest entry: the decompositions sum in different orders (the
// serial path's SIMD reductions, the packs' partial sums), so about half the
// arrays differ from the serial run in the last bits.
//
// Usage: lanes_test [--quick] [--drop-sync K [--lanes N]]
//   --quick        fewer random cases (for the ThreadSanitizer build)
//   --drop-sync K  every lane skips its K-th sync() (a deliberately broken
//                  kernel, to show that the checks can fail); runs one case
//                  with N lanes (default 4) and prints whether it still
//                  matches the serial run; exit status 0 (the verdict is
//                  ThreadSanitizer's, whose reports make it 66)
//
// Includes only csrc/kernels/**/*.h, the standard library and, on Linux, the
// futex system call for the barrier: no torch.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels/core/drivers.h"
#include "kernels/mlp/pack.h"
#include "kernels/mlp/task.h"

using namespace metafast;

// ---------------------------------------------------------------------------
// Lanes made of threads.
// ---------------------------------------------------------------------------

// A reusable barrier (std::barrier is C++20) that gives exactly the
// happens-before edges of __syncthreads() and no others: arrivals are
// acq_rel increments of one counter, the last arrival publishes a new
// generation with a release store, waiters leave on an acquire load of it,
// and sleep on a futex (not seen by ThreadSanitizer). A mutex/condition-
// variable barrier would hide races from ThreadSanitizer: a lane that runs
// ahead to the next barrier releases the shared mutex, and a lane still
// waking from the previous one acquires it, ordering accesses that the
// kernel leaves unordered (a plain program with one barrier dropped was
// reported in 4 of 10 runs that way, in 20 of 20 with this barrier).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      wake_all();
      return;
    }
    for (int spin = 0; generation_.load(std::memory_order_acquire) == gen; ++spin)
      if (spin > 64) sleep_while(gen);
  }

 private:
#if defined(__linux__)
  int* word() { return reinterpret_cast<int*>(&generation_); }
  void wake_all() { syscall(SYS_futex, word(), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0); }
  void sleep_while(int gen) { syscall(SYS_futex, word(), FUTEX_WAIT_PRIVATE, gen, nullptr, nullptr, 0); }
#else
  void wake_all() {}
  void sleep_while(int) { std::this_thread::yield(); }
#endif
  static_assert(sizeof(std::atomic<int>) == sizeof(int), "futex word");
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
  const int n_;
};

// R: rows per register block (kRowBlock): 1 as on the GPU, more as in a CPU task pack.
template <int R = 1>
struct ThreadLanes {
  static constexpr bool kSerial = false;
  static constexpr int kRowBlock = R;
  int id, n;
  Barrier* barrier;
  long drop_sync;         // skip this (1-based) sync() call; 0: none
  mutable long syncs = 0;  // this lane's sync() calls so far
  int lane() const { return id; }
  int count() const { return n; }
  void sync() const {
    if (++syncs == drop_sync) return;
    barrier->wait();
  }
  bool leader() const { return id == 0; }
};

// Runs f(lanes) on N threads, one ThreadLanes each; returns the sync() count.
template <int R = 1, typename F>
long run_on_threads(int N, long drop_sync, F f) {
  Barrier barrier(N);
  std::vector<std::thread> threads;
  std::vector<long> syncs(N, 0);
  threads.reserve(N);
  for (int i = 0; i < N; ++i)
    threads.emplace_back([&, i] {
      ThreadLanes<R> lanes{i, N, &barrier, drop_sync};
      f(lanes);
      syncs[i] = lanes.syncs;
    });
  for (auto& t : threads) t.join();
  for (int i = 1; i < N; ++i)
    if (syncs[i] != syncs[0]) {  // a divergent sync() would deadlock a GPU block
      std::fprintf(stderr, "lane %d called sync() %ld times, lane 0 %ld times\n", i, syncs[i], syncs[0]);
      std::exit(3);
    }
  return syncs[0];
}

// ---------------------------------------------------------------------------
// A problem, made as csrc/ops/mlp_adapt/host.h makes it (mlp_layout,
// mlp_problem, the argument structs), with every array owned here.
// ---------------------------------------------------------------------------
using Vec = std::vector<double>;
using IVec = std::vector<int64_t>;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Case {
  std::string name;
  std::vector<int> sizes;
  Activation act = Activation::ReLU;
  Loss loss = Loss::MSE;
  int tasks = 1, shots = 1, queries = 0, steps = 1;
  bool second_order = true, meta_sgd = false, want_grad_lrs = false, want_grad_x = false, want_grad_qx = false;
  bool has_g_losses = true, has_gq_out = false, has_gq_loss = false;  // upstream gradients given (else nullptr)
  double lr = 0.1;
  bool weighted = false;  // per-example support loss weights
  // MAML++: a row of rates per step (with meta_sgd; LSLR), the query loss after every step (MSL)
  bool step_rates = false, every_step = false;
  Vec lrs, init, x, y_float, qx, qy_float, weights;
  IVec y_class, qy_class;
  // upstream gradients of the backward
  Vec g_adapted, g_losses, g_qout, g_qloss;
};

MlpLayout make_layout(const std::vector<int>& sizes) {  // the kernels' own layout function
  const std::vector<int64_t> wide(sizes.begin(), sizes.end());
  return mlp_layout(wide.data(), int(wide.size()));
}

struct Outputs {
  // forward
  Vec adapted, losses, query_output, query_losses, trajectory;
  // backward
  Vec grad_init, grad_lrs, grad_x, grad_qx;
  // the meta-iteration in one run (MlpMetaGradArgs: the query losses' gradient only), with a query set
  Vec meta_losses, meta_query_output, meta_query_losses, meta_grad_init, meta_grad_lrs;
  // the same gradients through the two-op path (a backward that recomputes every step)
  Vec meta_recomputed_init, meta_recomputed_lrs;
  long forward_syncs = 0, backward_syncs = 0;
};

// The per-task workspace exactly as the kernels get it:
// mlp_workspace_size(layout, max(shots, queries)) elements per task,
// uninitialised (NaN here, so that reading an unwritten element shows).
struct Runner {
  const Case& c;
  MlpLayout m;
  int64_t stride;
  explicit Runner(const Case& cs) : c(cs), m(make_layout(cs.sizes)) {
    stride = mlp_workspace_size(m, std::max(c.shots, c.queries));
  }
  MlpProblem<double> problem(Vec& workspace) const {
    MlpShape shape;
    shape.layout = m;
    shape.act = c.act;
    shape.loss = c.loss;
    shape.tasks = c.tasks;
    shape.shots = c.shots;
    shape.queries = c.queries;
    shape.steps = c.steps;
    shape.step_rates = c.meta_sgd && c.step_rates;
    shape.query_every_step = c.queries > 0 && c.every_step;
    const bool mse = c.loss == Loss::MSE;
    MlpExamples<double> support, query;
    support.x = c.x.data();
    support.y_float = mse ? c.y_float.data() : nullptr;
    support.y_class = mse ? nullptr : c.y_class.data();
    support.weights = c.weighted ? c.weights.data() : nullptr;
    if (c.queries) {
      query.x = c.qx.data();
      query.y_float = mse ? c.qy_float.data() : nullptr;
      query.y_class = mse ? nullptr : c.qy_class.data();
    }
    return mlp_problem<double>(shape, c.lr, c.meta_sgd ? c.lrs.data() : nullptr, support, query, workspace.data());
  }

  // Tasks in packs of W (the CPU kernel's decomposition, kernels/task_pack.h),
  // with the pack scratch filled with NaN (all-ones bytes).
  template <int W, typename Args>
  static void run_packed(const Args& a) {
    using Packed = PackedMlpAdapt<double, W>;
    std::vector<TaskPack<double, W>> scratch(Packed::scratch_bytes(a) / sizeof(TaskPack<double, W>) + 1);
    for (int64_t g = 0; g < num_packs<Packed>(a.p.tasks); ++g) {
      std::memset(scratch.data(), 0xff, scratch.size() * sizeof(scratch[0]));
      run_pack<Packed>(a, g, reinterpret_cast<unsigned char*>(scratch.data()));
    }
  }

  // The forward or the backward (by argument type) of every task, split as
  // `lanes` says: 0 SerialLanes (the CPU kernel's per-task path), -2 or -8
  // task packs of that many tasks (two rows per register block), -3 three
  // threads with three rows per block (the packs' blocking split across
  // lanes), else that many threads, one row per block as on the GPU (the
  // syncs they made are returned).
  template <typename Args>
  long run_split(const Args& a, int lanes, long drop_sync) const {
    if (lanes == 0) {
      run_tasks(SerialLanes{}, a, 0, c.tasks);
    } else if (lanes == -2) {
      run_packed<2>(a);
    } else if (lanes == -8) {
      run_packed<8>(a);
    } else if (lanes == -3) {
      return run_on_threads<3>(3, drop_sync, [&](const ThreadLanes<3>& L) { run_tasks(L, a, 0, c.tasks); });
    } else {
      return run_on_threads(lanes, drop_sync, [&](const ThreadLanes<>& L) { run_tasks(L, a, 0, c.tasks); });
    }
    return 0;
  }

  // See run_split for `lanes`. The backward runs from `fwd` (the serial
  // forward's saved outputs), so that it is compared on identical inputs.
  Outputs run(int lanes, const Outputs* fwd, long drop_sync = 0) const {
    const int64_t T = c.tasks, P = m.num_params, S = c.steps, Q = c.queries, K = c.shots;
    const int dL = m.sizes[m.num_layers], d0 = m.sizes[0];
    Outputs o;
    Vec ws(size_t(T * stride), kNaN);
    o.adapted.assign(T * P, kNaN);
    o.losses.assign(T * S, kNaN);
    o.query_output.assign(Q ? T * Q * dL : 0, kNaN);
    const int64_t per_task_query_losses = c.every_step ? S : 1, rates = (c.step_rates ? S : 1) * P;
    o.query_losses.assign(Q ? T * per_task_query_losses : 0, kNaN);
    o.trajectory.assign(T * S * P, kNaN);
    MlpAdaptForwardArgs<double> f;
    f.p = problem(ws);
    f.init = c.init.data();
    f.adapted = o.adapted.data();
    f.losses = o.losses.data();
    f.query_output = Q ? o.query_output.data() : nullptr;
    f.query_losses = Q ? o.query_losses.data() : nullptr;
    f.trajectory = o.trajectory.data();
    o.forward_syncs = run_split(f, lanes, drop_sync);
    if (!fwd) fwd = &o;
    std::fill(ws.begin(), ws.end(), kNaN);
    o.grad_init.assign(T * P, kNaN);
    o.grad_lrs.assign(c.want_grad_lrs ? T * rates : 0, kNaN);
    o.grad_x.assign(c.want_grad_x ? T * K * d0 : 0, kNaN);
    o.grad_qx.assign(c.want_grad_qx ? T * Q * d0 : 0, kNaN);
    MlpAdaptBackwardArgs<double> b;
    b.p = problem(ws);
    b.second_order = c.second_order;
    b.grad_adapted = c.g_adapted.data();
    b.grad_losses = c.has_g_losses ? c.g_losses.data() : nullptr;
    b.grad_query_output = c.has_gq_out ? c.g_qout.data() : nullptr;
    b.grad_query_losses = c.has_gq_loss ? c.g_qloss.data() : nullptr;
    b.adapted = fwd->adapted.data();
    b.trajectory = fwd->trajectory.data();
    b.grad_init = o.grad_init.data();
    b.grad_lrs = c.want_grad_lrs ? o.grad_lrs.data() : nullptr;
    b.grad_x = c.want_grad_x ? o.grad_x.data() : nullptr;
    b.grad_qx = c.want_grad_qx ? o.grad_qx.data() : nullptr;
    // A drop past the forward's syncs lands in the backward.
    o.backward_syncs = run_split(b, lanes, drop_sync > o.forward_syncs ? drop_sync - o.forward_syncs : 0);
    if (Q && c.has_gq_loss && !drop_sync) run_meta_grad(f, b, ws, lanes, o);
    return o;
  }

  // The forward and the backward in one run per task (or pack), from the
  // query losses' gradient alone, into o.meta_*.
  void run_meta_grad(const MlpAdaptForwardArgs<double>& f, const MlpAdaptBackwardArgs<double>& b, Vec& ws,
                     int lanes, Outputs& o) const {
    const int64_t T = c.tasks, P = m.num_params, S = c.steps;
    std::fill(ws.begin(), ws.end(), kNaN);
    Vec adapted(T * P, kNaN), trajectory(T * S * P, kNaN), primal(T * S * mlp_primal_size(m, c.shots), kNaN);
    o.meta_losses.assign(o.losses.size(), kNaN);
    o.meta_query_output.assign(o.query_output.size(), kNaN);
    o.meta_query_losses.assign(o.query_losses.size(), kNaN);
    o.meta_grad_init.assign(o.grad_init.size(), kNaN);
    o.meta_grad_lrs.assign(o.grad_lrs.size(), kNaN);
    MlpMetaGradArgs<double> a;
    a.p = problem(ws);
    a.forward = f;
    a.forward.p = a.p;
    a.forward.adapted = adapted.data();
    a.forward.trajectory = trajectory.data();
    a.forward.primal = primal.data();  // recorded here and replayed by the backward, as the op does
    a.forward.losses = o.meta_losses.data();
    a.forward.query_output = o.meta_query_output.data();
    a.forward.query_losses = o.meta_query_losses.data();
    a.backward = b;
    a.backward.p = a.p;
    a.backward.grad_adapted = nullptr;
    a.backward.grad_losses = nullptr;
    a.backward.grad_query_output = nullptr;
    a.backward.adapted = adapted.data();
    a.backward.trajectory = trajectory.data();
    a.backward.primal = primal.data();
    a.backward.grad_init = o.meta_grad_init.data();
    a.backward.grad_lrs = c.want_grad_lrs ? o.meta_grad_lrs.data() : nullptr;
    a.backward.grad_x = nullptr;
    a.backward.grad_qx = nullptr;
    run_split(a, lanes, 0);
    // The same gradients through the two-op path: a backward from the query
    // losses' gradient alone that recomputes every step (no replay), on the
    // forward outputs of `b` (a task pack keeps its own adapted parameters and
    // trajectory). The one-launch meta-iteration must agree with it.
    MlpAdaptBackwardArgs<double> r = a.backward;  // the meta-iteration's upstream gradients
    r.adapted = b.adapted;
    r.trajectory = b.trajectory;
    r.primal = nullptr;
    o.meta_recomputed_init.assign(o.grad_init.size(), kNaN);
    o.meta_recomputed_lrs.assign(o.grad_lrs.size(), kNaN);
    r.grad_init = o.meta_recomputed_init.data();
    r.grad_lrs = c.want_grad_lrs ? o.meta_recomputed_lrs.data() : nullptr;
    std::fill(ws.begin(), ws.end(), kNaN);
    run_split(r, lanes, 0);
  }
};

// ---------------------------------------------------------------------------
// Random cases.
// ---------------------------------------------------------------------------
struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(g); }
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(g); }
  bool coin(double p = 0.5) { return uniform(0, 1) < p; }
  Vec normals(int64_t n, double s = 1.0) {
    Vec v(n);
    for (auto& e : v) e = s * normal();
    return v;
  }
  IVec labels(int64_t n, int classes) {
    IVec v(n);
    for (auto& e : v) e = uniform_int(0, classes - 1);
    return v;
  }
};

// The arrays of a case, for its shapes and options.
void fill_arrays(Case& c, Rng& r) {
  const MlpLayout m = make_layout(c.sizes);
  const int L = m.num_layers;
  const int64_t P = m.num_params, T = c.tasks, K = c.shots, Q = c.queries, d0 = c.sizes[0], dL = c.sizes[L];
  c.init.resize(P);
  for (int l = 1; l <= L; ++l) {  // nn.Linear-like scale keeps activations O(1)
    const double s = 1.0 / std::sqrt(double(c.sizes[l - 1]));
    for (int64_t p = m.weight_offset[l]; p < m.bias_offset[l] + c.sizes[l]; ++p) c.init[p] = s * r.normal();
  }
  c.lrs.resize((c.step_rates ? c.steps : 1) * P);
  for (auto& e : c.lrs) e = r.uniform(0.0, 2.0 * c.lr);
  c.x = r.normals(T * K * d0);
  c.weights.resize(T * K);
  for (auto& e : c.weights) e = r.uniform(-1.0, 2.0);  // negative too (advantage-weighted losses)
  c.qx = r.normals(T * Q * d0);
  c.y_float = r.normals(T * K * dL);
  c.qy_float = r.normals(T * Q * dL);
  c.y_class = r.labels(T * K, int(dL));
  c.qy_class = r.labels(T * Q, int(dL));
  c.g_adapted = r.normals(T * P);
  c.g_losses = r.normals(T * c.steps);
  c.g_qout = r.normals(T * Q * dL);
  c.g_qloss = r.normals(T * (c.every_step ? c.steps : 1));
}

Case random_case(uint64_t seed) {
  Rng r(seed);
  Case c;
  const int L = r.uniform_int(1, 4);
  for (int l = 0; l <= L; ++l) c.sizes.push_back(r.coin(0.15) ? r.uniform_int(1, 3) : r.uniform_int(1, 40));
  c.act = r.coin() ? Activation::ReLU : Activation::Tanh;
  c.loss = r.coin() ? Loss::MSE : Loss::CrossEntropy;
  c.tasks = r.uniform_int(1, 3);
  c.shots = r.uniform_int(1, 12);
  c.queries = r.coin(0.7) ? r.uniform_int(1, 12) : 0;
  c.steps = r.uniform_int(1, 4);
  c.second_order = r.coin(0.6);
  c.meta_sgd = r.coin();
  c.want_grad_lrs = c.meta_sgd && r.coin(0.7);
  c.want_grad_x = r.coin();
  c.want_grad_qx = c.queries > 0 && r.coin();
  c.has_g_losses = r.coin(0.7);
  c.has_gq_out = c.queries > 0 && r.coin(0.6);
  c.has_gq_loss = c.queries > 0 && r.coin(0.8);
  c.lr = r.uniform(0.02, 0.3);
  c.weighted = r.coin(0.4);
  c.step_rates = c.meta_sgd && r.coin(0.4);
  c.every_step = c.queries > 0 && r.coin(0.4);
  fill_arrays(c, r);
  return c;
}

// One NaN somewhere the user can put one: a parameter, an input, a target, a
// per-parameter rate, an upstream gradient.
Case with_random_nan(Case c, uint64_t seed) {
  Rng r(seed);
  std::vector<std::pair<Vec*, const char*>> places = {{&c.init, "init"}, {&c.x, "x"}, {&c.g_adapted, "grad_adapted"}};
  if (c.loss == Loss::MSE) places.push_back({&c.y_float, "y"});
  if (c.queries) places.push_back({&c.qx, "qx"});
  if (c.queries && c.loss == Loss::MSE) places.push_back({&c.qy_float, "qy"});
  if (c.meta_sgd) places.push_back({&c.lrs, "lrs"});
  if (c.weighted) places.push_back({&c.weights, "support_weights"});
  if (c.has_g_losses) places.push_back({&c.g_losses, "grad_losses"});
  auto [v, name] = places[r.uniform_int(0, int(places.size()) - 1)];
  (*v)[r.uniform_int(0, int(v->size()) - 1)] = kNaN;
  c.name += std::string(" nan:") + name;
  return c;
}

// ---------------------------------------------------------------------------
// Comparison.
// ---------------------------------------------------------------------------
struct Report {
  int passed = 0, failed = 0;
  double worst = 0.0;   // largest relative error seen
  long differing = 0;   // arrays not bit-identical to the serial run
  long compared = 0;
  std::map<int, int> runs;  // lane count -> comparisons of a whole run with the serial one
};

// |got − want|_inf ≤ tol·|want|_inf over the finite entries (summation order
// may differ), NaN exactly where the serial run has NaN, ±inf equal.
bool compare(const char* what, const Vec& got, const Vec& want, double tol, Report& rep, std::string& why) {
  ++rep.compared;
  if (got.size() != want.size()) {
    why += std::string(what) + ": size differs; ";
    return false;
  }
  double scale = 0.0, err = 0.0;
  bool ok = true, identical = true;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(double)) != 0) identical = false;
    if (std::isnan(want[i]) != std::isnan(got[i])) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%s[%zu]: %g but serial %g; ", what, i, got[i], want[i]);
      why += buf;
      return false;
    }
    if (std::isnan(want[i])) continue;
    if (std::isinf(want[i]) || std::isinf(got[i])) {
      if (got[i] != want[i]) ok = false;
      continue;
    }
    scale = std::max(scale, std::fabs(want[i]));
    err = std::max(err, std::fabs(got[i] - want[i]));
  }
  const double rel = scale > 0 ? err / scale : err;
  rep.worst = std::max(rep.worst, rel);
  if (!identical) ++rep.differing;
  if (!ok || rel > tol) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s: relative error %.3g > %.1g; ", what, rel, tol);
    why += buf;
    return false;
  }
  return true;
}

bool compare_all(const Outputs& got, const Outputs& want, Report& rep, std::string& why) {
  const double tol = 1e-12;
  bool ok = true;
  ok &= compare("adapted", got.adapted, want.adapted, tol, rep, why);
  ok &= compare("losses", got.losses, want.losses, tol, rep, why);
  ok &= compare("query_output", got.query_output, want.query_output, tol, rep, why);
  ok &= compare("query_losses", got.query_losses, want.query_losses, tol, rep, why);
  ok &= compare("trajectory", got.trajectory, want.trajectory, tol, rep, why);
  ok &= compare("grad_init", got.grad_init, want.grad_init, tol, rep, why);
  ok &= compare("grad_lrs", got.grad_lrs, want.grad_lrs, tol, rep, why);
  ok &= compare("grad_x", got.grad_x, want.grad_x, tol, rep, why);
  ok &= compare("grad_qx", got.grad_qx, want.grad_qx, tol, rep, why);
  ok &= compare("meta_losses", got.meta_losses, want.meta_losses, tol, rep, why);
  ok &= compare("meta_query_output", got.meta_query_output, want.meta_query_output, tol, rep, why);
  ok &= compare("meta_query_losses", got.meta_query_losses, want.meta_query_losses, tol, rep, why);
  ok &= compare("meta_grad_init", got.meta_grad_init, want.meta_grad_init, tol, rep, why);
  ok &= compare("meta_grad_lrs", got.meta_grad_lrs, want.meta_grad_lrs, tol, rep, why);
  // within this run: the replaying meta-iteration against the recomputing two-op path
  ok &= compare("meta_grad_init vs two-op", got.meta_grad_init, got.meta_recomputed_init, tol, rep, why);
  ok &= compare("meta_grad_lrs vs two-op", got.meta_grad_lrs, got.meta_recomputed_lrs, tol, rep, why);
  return ok;
}

bool all_finite(const Outputs& o, std::string& why) {
  const std::pair<const char*, const Vec*> arrays[] = {
      {"adapted", &o.adapted},     {"losses", &o.losses},       {"query_output", &o.query_output},
      {"query_losses", &o.query_losses}, {"trajectory", &o.trajectory}, {"grad_init", &o.grad_init},
      {"grad_lrs", &o.grad_lrs},   {"grad_x", &o.grad_x},       {"grad_qx", &o.grad_qx},
      {"meta_losses", &o.meta_losses}, {"meta_query_output", &o.meta_query_output},
      {"meta_query_losses", &o.meta_query_losses}, {"meta_grad_init", &o.meta_grad_init},
      {"meta_grad_lrs", &o.meta_grad_lrs}};
  for (const auto& [name, v] : arrays)
    for (size_t i = 0; i < v->size(); ++i)
      if (!std::isfinite((*v)[i])) {
        why += std::string(name) + "[" + std::to_string(i) + "] is not finite (unwritten, or read unwritten scratch); ";
        return false;
      }
  return true;
}

std::string describe(const Case& c) {
  std::string s = "sizes=[";
  for (size_t i = 0; i < c.sizes.size(); ++i) s += (i ? "," : "") + std::to_string(c.sizes[i]);
  s += "] " + std::string(c.act == Activation::ReLU ? "relu" : "tanh") + " " +
       (c.loss == Loss::MSE ? "mse" : "ce") + " T=" + std::to_string(c.tasks) + " K=" + std::to_string(c.shots) +
       " Q=" + std::to_string(c.queries) + " S=" + std::to_string(c.steps) + (c.second_order ? " 2nd" : " 1st") +
       (c.meta_sgd ? " meta-sgd" : "") + (c.want_grad_lrs ? " +glrs" : "") + (c.want_grad_x ? " +gx" : "") +
       (c.want_grad_qx ? " +gqx" : "") + (c.has_g_losses ? "" : " -glosses") + (c.has_gq_out ? " +gqout" : "") +
       (c.has_gq_loss ? " +gqloss" : "") + (c.weighted ? " weighted" : "") + (c.step_rates ? " lslr" : "") +
       (c.every_step ? " msl" : "") + c.name;
  return s;
}

void record(Report& rep, bool ok, const std::string& label, const std::string& why) {
  if (ok) {
    ++rep.passed;
  } else {
    ++rep.failed;
    std::printf("FAIL %s: %s\n", label.c_str(), why.c_str());
  }
}

// Compares the N-lane runs of `c` with its serial run. `expect_finite`: the
// serial outputs must be finite (a clean case), which also catches a read of
// unwritten scratch or an output left unwritten (both start as NaN).
void check_case(const Case& c, const std::vector<int>& lane_counts, bool expect_finite, Report& rep) {
  Runner runner(c);
  const Outputs serial = runner.run(0, nullptr);
  if (expect_finite) {
    std::string why;
    record(rep, all_finite(serial, why), "serial " + describe(c), why);
  }
  for (int N : lane_counts) {
    const Outputs par = runner.run(N, &serial);
    ++rep.runs[N];
    std::string why;
    record(rep, compare_all(par, serial, rep, why), "N=" + std::to_string(N) + " " + describe(c), why);
  }
}

// ---------------------------------------------------------------------------
// NaN semantics and bad labels, on both the serial and the N-lane runs.
// ---------------------------------------------------------------------------
bool all_nan(const Vec& v, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i)
    if (!std::isnan(v[i])) return false;
  return true;
}
bool none_nan(const Vec& v, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i)
    if (std::isnan(v[i])) return false;
  return true;
}

void check_nan_semantics(Report& rep, const std::vector<int>& lane_counts) {
  auto expect = [&](const std::string& label, bool ok, const char* msg) { record(rep, ok, label, msg); };
  for (int variant = 0; variant < 8; ++variant) {
    Case c;
    c.sizes = {2, 8, 8, variant % 2 ? 3 : 1};
    c.act = variant % 4 < 2 ? Activation::ReLU : Activation::Tanh;
    c.loss = variant % 2 ? Loss::CrossEntropy : Loss::MSE;
    c.tasks = 2, c.shots = 5, c.queries = 4, c.steps = 2;
    c.second_order = variant < 4;
    c.want_grad_x = true, c.want_grad_qx = true, c.has_gq_out = false, c.has_gq_loss = true;
    Rng r(4000 + variant);
    fill_arrays(c, r);
    const int64_t S = c.steps;
    const MlpLayout m = make_layout(c.sizes);
    const std::string tag = describe(c);
    std::vector<int> runs = {0};
    runs.insert(runs.end(), lane_counts.begin(), lane_counts.end());

    // 1. One NaN first-layer weight: every loss NaN (ReLU used to turn it into 0).
    {
      Case n = c;
      n.init[m.weight_offset[1] + 3] = kNaN;
      Runner runner(n);
      for (int N : runs) {
        const Outputs o = runner.run(N, nullptr);
        const std::string label = "nan W1, lanes=" + std::to_string(N) + " " + tag;
        expect(label, all_nan(o.losses, 0, o.losses.size()), "a support loss is finite over a NaN weight");
        expect(label, all_nan(o.query_losses, 0, o.query_losses.size()), "a query loss is finite over a NaN weight");
        expect(label, all_nan(o.query_output, 0, o.query_output.size()), "a query output is finite over a NaN weight");
        expect(label, !none_nan(o.grad_init, 0, o.grad_init.size()), "no NaN in grad_init");
      }
    }
    // 2. NaN in one support input of task 0: task 0's losses and adapted
    // parameters NaN, task 1 untouched.
    {
      Case n = c;
      n.x[1] = kNaN;
      Runner runner(n);
      for (int N : runs) {
        const Outputs o = runner.run(N, nullptr);
        const std::string label = "nan x, lanes=" + std::to_string(N) + " " + tag;
        expect(label, all_nan(o.losses, 0, S), "task 0's support loss is finite over a NaN input");
        expect(label, all_nan(o.query_losses, 0, 1), "task 0's query loss is finite over a NaN input");
        expect(label, none_nan(o.losses, S, 2 * S) && none_nan(o.query_losses, 1, 2) &&
                          none_nan(o.grad_init, m.num_params, 2 * m.num_params),
               "task 1 got a NaN from task 0's input");
        expect(label, !none_nan(o.grad_x, 0, o.grad_x.size() / 2), "no NaN in task 0's grad_x");
      }
    }
    // 3. A NaN target (MSE) or a NaN logit past the first (cross-entropy;
    // a running max `y > m ? y : m` skips it).
    {
      Case n = c;
      if (c.loss == Loss::MSE)
        n.qy_float[2] = kNaN;  // task 0, query example 2
      else
        n.init[m.bias_offset[m.num_layers] + 2] = kNaN;  // last logit of every example
      Runner runner(n);
      for (int N : runs) {
        const Outputs o = runner.run(N, nullptr);
        const std::string label = "nan target/logit, lanes=" + std::to_string(N) + " " + tag;
        expect(label, all_nan(o.query_losses, 0, 1), "query loss finite over a NaN target or logit");
        if (c.loss != Loss::MSE)
          expect(label, all_nan(o.losses, 0, o.losses.size()), "support loss finite over a NaN logit");
      }
    }
    // 4. Bad class labels (cross-entropy): NaN loss and gradients for the task
    // whose example has one, never an out-of-bounds read (huge labels would
    // fault), other tasks untouched.
    if (c.loss == Loss::CrossEntropy) {
      for (const int64_t bad : {int64_t(-1), int64_t(c.sizes.back()), int64_t(1) << 40, -(int64_t(1) << 40)}) {
        for (const bool query : {false, true}) {
          Case n = c;
          (query ? n.qy_class : n.y_class)[1] = bad;  // task 0, example 1
          Runner runner(n);
          for (int N : runs) {
            const Outputs o = runner.run(N, nullptr);
            const std::string label = std::string("bad ") + (query ? "query" : "support") + " label " +
                                      std::to_string(bad) + ", lanes=" + std::to_string(N) + " " + tag;
            if (query) {
              expect(label, all_nan(o.query_losses, 0, 1), "query loss not NaN for a bad label");
              expect(label, !none_nan(o.grad_init, 0, m.num_params), "task 0's grad_init has no NaN");
            } else {
              expect(label, all_nan(o.losses, 0, S), "support loss not NaN for a bad label");
              expect(label, !none_nan(o.adapted, 0, m.num_params), "adapted parameters finite after a NaN gradient");
              expect(label, !none_nan(o.grad_init, 0, m.num_params), "task 0's grad_init has no NaN");
            }
            expect(label, none_nan(o.losses, S, 2 * S) && none_nan(o.query_losses, 1, 2) &&
                              none_nan(o.grad_init, m.num_params, 2 * m.num_params),
                   "task 1 got a NaN from task 0's label");
          }
          // and the lanes agree with the serial run element by element
          const Outputs serial = runner.run(0, nullptr);
          for (int N : lane_counts) {
            std::string why;
            ++rep.runs[N];
            record(rep, compare_all(runner.run(N, &serial), serial, rep, why),
                   "bad label N=" + std::to_string(N) + " " + tag, why);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
int main(int argc, char** argv) {
  bool quick = false;
  long drop_sync = 0;
  int drop_lanes = 4;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--drop-sync") && i + 1 < argc) {
      drop_sync = std::atol(argv[++i]);
    } else if (!std::strcmp(argv[i], "--lanes") && i + 1 < argc) {
      drop_lanes = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--drop-sync K [--lanes N]]\n", argv[0]);
      return 2;
    }
  }
  const auto start = std::chrono::steady_clock::now();
  Report rep;

  if (drop_sync > 0) {
    // A broken kernel: every lane skips its drop_sync-th sync(). Under
    // ThreadSanitizer this must be reported as a data race.
    Case c;
    c.sizes = {3, 16, 16, 2};
    c.act = Activation::Tanh;
    c.loss = Loss::MSE;
    c.tasks = 1, c.shots = 8, c.queries = 4, c.steps = 2, c.second_order = true;
    c.want_grad_x = true, c.want_grad_qx = true, c.has_gq_out = true, c.has_gq_loss = true;
    Rng r(11);
    fill_arrays(c, r);
    Runner runner(c);
    const Outputs serial = runner.run(0, nullptr);
    const Outputs par = runner.run(drop_lanes, &serial, drop_sync);
    std::string why;
    const bool same = compare_all(par, serial, rep, why);
    std::printf("dropped sync %ld of %ld (forward) + %ld (backward): results %s the serial run's%s%s\n", drop_sync,
                par.forward_syncs, par.backward_syncs + (drop_sync > par.forward_syncs ? 1 : 0),
                same ? "match" : "differ from", same ? "" : ": ", why.c_str());
    return 0;  // the verdict is ThreadSanitizer's
  }

  // Random cases: every case with 1 and 3 lanes; fewer with 32 and 256.
  const int cases = quick ? 40 : 240;
  for (int i = 0; i < cases; ++i) {
    Case c = random_case(uint64_t(i) * 7919 + 1);
    c.name = " case " + std::to_string(i);
    std::vector<int> lanes = {1, 3, -2, -8, -3};
    if (i % 3 == 0) lanes.push_back(32);
    if (i % (quick ? 10 : 8) == 0) lanes.push_back(256);
    check_case(c, lanes, true, rep);
  }
  // The same with one NaN injected: NaN in the same places as the serial run.
  const int nan_cases = quick ? 16 : 80;
  for (int i = 0; i < nan_cases; ++i) {
    Case c = with_random_nan(random_case(uint64_t(i) * 104729 + 5), uint64_t(i) + 99);
    c.name += " nan-case " + std::to_string(i);
    std::vector<int> lanes = {1, 3, -2, -8, -3};
    if (i % 3 == 0) lanes.push_back(32);
    if (i % 8 == 0) lanes.push_back(256);
    check_case(c, lanes, false, rep);
  }
  check_nan_semantics(rep, quick ? std::vector<int>{3, -2} : std::vector<int>{1, 3, 32, -2, -8});

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("whole runs compared with the serial run:");
  for (const auto& [n, count] : rep.runs)
    n < 0 ? std::printf(" %d in task packs of %d;", count, -n) : std::printf(" %d with N=%d;", count, n);
  std::printf("\n");
  std::printf("worst relative error %.3g; %ld of %ld compared arrays not bit-identical to the serial run\n",
              rep.worst, rep.differing, rep.compared);
  std::printf("%d passed, %d failed (%.1f s)\n", rep.passed, rep.failed, secs);
  return rep.failed ? 1 : 0;
}
