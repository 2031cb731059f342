// Test hooks of asvp_fast._C: the GPU algorithms run on the host (no GPU needed), so the CPU
// tests check them against plain references. Private; the public API never calls them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "bald_math.h"
#include "diversity_math.h"
#include "gpu_renderings.h"
#include "radix_select.h"
#include "uncertainty_math.h"

namespace py = pybind11;

namespace asvp {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

template <class T>
std::vector<T> to_vector(const py::array_t<T, py::array::c_style | py::array::forcecast>& a) {
  return std::vector<T>(a.data(), a.data() + a.size());
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// Ranks float32 statistics with the GPU's selection algorithm run on the host.
py::array_t<int64_t> radix_select_scores(const py::array_t<float, py::array::c_style>& statistic, int kind,
                                         const py::object& exclude, int64_t k) {
  const int64_t n = statistic.size();
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  const float* s = statistic.data();
  const uint8_t* mask = nullptr;
  py::array_t<uint8_t, py::array::c_style> mask_array;
  if (!exclude.is_none()) {
    mask_array = exclude.cast<py::array_t<uint8_t, py::array::c_style>>();
    require(mask_array.size() == n, "exclude mask length differs from the statistic's");
    mask = mask_array.data();
  }
  for (int64_t i = 0; i < n; ++i)
    keys[static_cast<size_t>(i)] = (mask && mask[i]) ? 0u : orderable_bits(uncertainty_key(static_cast<Kind>(kind), s[i]));
  return to_array(radix_select_host(keys.data(), n, k));
}

// The CUDA row kernel's arithmetic on the host: `lanes` lanes take 16-byte chunks of `width`
// columns round-robin (width 4: float32 rows), then merge in the butterfly pattern of the
// shuffles. lanes = 0: the kernel's own choice for the row length.
py::array_t<float> warp_emulated_scores(const py::array_t<float, py::array::c_style>& x, int kind, bool from_logits,
                                        int lanes, int width) {
  require(x.ndim() == 2, "x must be 2-dimensional");
  const int64_t n = x.shape(0), C = x.shape(1);
  require(width >= 1 && width <= 8, "width must lie in [1, 8]");
  if (lanes == 0) lanes = uncertainty_lanes(C, width);
  require(lanes == 1 || lanes == 2 || lanes == 4 || lanes == 8 || lanes == 16 || lanes == 32, "lanes must be a power of 2 up to 32");
  const Kind k = static_cast<Kind>(kind);
  const bool entropy = k == Kind::Entropy;
  py::array_t<float> out(static_cast<py::ssize_t>(n));
  auto butterfly = [lanes](std::vector<RowStats<float>>& s) {
    for (int offset = lanes / 2; offset > 0; offset /= 2) {
      std::vector<RowStats<float>> next(s);
      for (int i = 0; i < lanes; ++i) merge_row_stats(next[static_cast<size_t>(i)], s[static_cast<size_t>(i ^ offset)]);
      s = next;
    }
  };
  std::vector<RowStats<float>> s(static_cast<size_t>(lanes));
  for (int64_t r = 0; r < n; ++r) {
    const float* row = x.data() + r * C;
    const auto load = [row](int64_t c) { return row[c]; };
    for (int lane = 0; lane < lanes; ++lane)
      s[static_cast<size_t>(lane)] = chunked_pass1<float>(load, C, lane, lanes, width, from_logits, entropy);
    butterfly(s);
    RowStats<float> total = s[0];
    const RowProblem problem = from_logits ? check_logit_row(total) : check_probability_row(total, true, 1e-3f);
    if (problem != RowProblem::None) throw py::value_error("row " + std::to_string(r) + " is invalid");
    if (from_logits) {
      for (int lane = 0; lane < lanes; ++lane)
        s[static_cast<size_t>(lane)] = chunked_pass2<float>(load, C, lane, lanes, width, total.max1, entropy);
      butterfly(s);
      total.sum = s[0].sum;
      total.aux = s[0].aux;
      out.mutable_data()[r] = statistic_from_logits(total, k);
    } else {
      out.mutable_data()[r] = statistic_from_probabilities(total, k);
    }
  }
  return out;
}

// The GPU update kernel on every block: the compacted rows (global indices, block by block in
// list order), the state after folding in `distance`, and the aggregates.
py::dict render_update(const py::array_t<float, py::array::c_style | py::array::forcecast>& r,
                       const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& assigned,
                       const py::array_t<float, py::array::c_style | py::array::forcecast>& gaps,
                       const py::array_t<float, py::array::c_style | py::array::forcecast>& distance, int32_t slot,
                       float slack, bool prune, bool validate) {
  require(r.size() == assigned.size() && r.size() == distance.size(), "r, assigned and distance must have one entry per row");
  RenderedState st(to_vector(r), to_vector(assigned));
  const std::vector<float> g = to_vector(gaps);
  for (int32_t a : st.assigned)
    require(a < static_cast<int32_t>(g.size()), "an assigned slot has no gap");
  const float* d = distance.data();
  std::vector<int64_t> todo;
  int64_t possible = 0;
  for (int64_t b = 0; b < st.blocks; ++b) {
    const auto listed = render_update_block(st, b, g, [d](int64_t i) { return d[i]; }, slot, slack, prune, validate, possible);
    for (int local : listed) todo.push_back(b * kSampleBlock + local);
  }
  py::dict out;
  out["todo"] = to_array(todo);
  out["r"] = to_array(st.r);
  out["assigned"] = to_array(st.assigned);
  out["possible"] = possible;
  out["farthest"] = to_array(st.farthest);
  out["weight"] = to_array(st.weight);
  out["segments"] = to_array(st.segments);
  out["candidates"] = to_array(st.candidates);
  return out;
}

// The GPU choose kernel's D² draw over r (aggregates rendered from r first); -1: no row.
int64_t render_choose_d2_hook(const py::array_t<float, py::array::c_style | py::array::forcecast>& r, double u) {
  RenderedState st(to_vector(r), std::vector<int32_t>(static_cast<size_t>(r.size()), -1));
  for (int64_t b = 0; b < st.blocks; ++b) render_block_aggregates(st, b, st.staged(b));
  return render_choose_d2(st, u);
}

// The definition the CPU engine samples with (d2_draw over the sums of diversity_math.h), or
// -1 when every weight is 0.
int64_t d2_draw_definition(const py::array_t<float, py::array::c_style | py::array::forcecast>& r_in, double u) {
  const std::vector<float> r = to_vector(r_in);
  const int64_t n = static_cast<int64_t>(r.size()), blocks = ceil_div(n, kSampleBlock);
  const auto row_w = [&](int64_t i) { return d2_weight(r[static_cast<size_t>(i)]); };
  const auto seg_w = [&](int64_t b, int s) { return segment_weight(row_w, n, b, s); };
  std::vector<double> weight(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b)
    weight[static_cast<size_t>(b)] = block_weight_of([&](int s) { return seg_w(b, s); });
  const auto block_w = [&](int64_t b) { return weight[static_cast<size_t>(b)]; };
  const auto group_w = [&](int64_t g) { return group_weight(block_w, blocks, g); };
  return d2_draw(u, n, blocks, group_w, block_w, seg_w, row_w);
}

// BALD's polynomial e^x or ln x (bald_math.h) element-wise, against libm in the tests.
py::array_t<double> bald_elementary(const py::array_t<double, py::array::c_style | py::array::forcecast>& x,
                                    const std::string& which) {
  require(which == "exp" || which == "log", "which must be 'exp' or 'log'");
  std::vector<double> out = to_vector(x);
  for (double& v : out) v = which == "exp" ? bald_exp(v) : bald_log(v);
  return to_array(out);
}

// The 32 lanes of a warp after the CUDA kernel's butterfly merge: lane 0's summary.
BaldSample butterfly_merge(std::vector<BaldSample> lanes) {
  for (int offset = 16; offset > 0; offset /= 2) {
    std::vector<BaldSample> next(lanes);
    for (int l = 0; l < 32; ++l) merge_bald_sample(next[static_cast<size_t>(l)], lanes[static_cast<size_t>(l ^ offset)]);
    lanes.swap(next);
  }
  return lanes[0];
}

double butterfly_sum(std::vector<double> lanes) {
  for (int offset = 16; offset > 0; offset /= 2) {
    std::vector<double> next(lanes);
    for (int l = 0; l < 32; ++l) next[static_cast<size_t>(l)] += lanes[static_cast<size_t>(l ^ offset)];
    lanes.swap(next);
  }
  return lanes[0];
}

// BALD of every row of float64 (T, N, C) samples in the CUDA kernel's order (bald.cu: lane l of
// 32 takes columns l, l + 32, ...; butterfly merges), run on the host; NaN for a bad row.
py::array_t<double> bald_warp_rendering(const py::array_t<double, py::array::c_style | py::array::forcecast>& x,
                                        bool from_logits, bool validate, double sum_tolerance) {
  require(x.ndim() == 3, "x must be (T, N, C)");
  const int64_t T = x.shape(0), N = x.shape(1), C = x.shape(2);
  const double* data = x.data();
  std::vector<double> out(static_cast<size_t>(N));
  for (int64_t r = 0; r < N; ++r) {
    std::vector<double> sums(static_cast<size_t>(C), 0.0);
    double entropy_sum = 0.0;
    bool bad = false;
    for (int64_t t = 0; t < T && !bad; ++t) {
      const double* row = data + (t * N + r) * C;
      std::vector<BaldSample> lanes(32, bald_sample_identity());
      for (int l = 0; l < 32; ++l)
        for (int64_t c = l; c < C; c += 32) {
          if (from_logits) bald_push_logit_pass1(lanes[static_cast<size_t>(l)], row[c]);
          else bald_push_probability(lanes[static_cast<size_t>(l)], row[c]);
        }
      BaldSample s = butterfly_merge(lanes);
      if (from_logits && s.nonfinite == 0.0) {
        std::vector<BaldSample> terms(32, bald_sample_identity());
        for (int l = 0; l < 32; ++l) {
          terms[static_cast<size_t>(l)].max = s.max;
          for (int64_t c = l; c < C; c += 32) bald_push_logit_pass2(terms[static_cast<size_t>(l)], row[c]);
        }
        const BaldSample merged = butterfly_merge(terms);
        s.sum = merged.sum;
        s.aux = merged.aux;
      }
      if (check_bald_sample(s, from_logits, validate, sum_tolerance) != RowProblem::None) {
        bad = true;
        break;
      }
      entropy_sum += bald_sample_entropy(s, from_logits);
      for (int64_t c = 0; c < C; ++c) {
        double value = row[c];
        if (from_logits) {
          BaldSample scratch = s;
          value = bald_push_logit_pass2(scratch, row[c]);
        }
        sums[static_cast<size_t>(c)] += bald_probability(value, s, from_logits);
      }
    }
    if (bad) {
      out[static_cast<size_t>(r)] = NAN;
      continue;
    }
    std::vector<double> parts(32, 0.0);
    for (int l = 0; l < 32; ++l)
      for (int64_t c = l; c < C; c += 32) parts[static_cast<size_t>(l)] += bald_mean_entropy_term(sums[static_cast<size_t>(c)], T);
    out[static_cast<size_t>(r)] = bald_value(butterfly_sum(parts), entropy_sum, T);
  }
  return to_array(out);
}

using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;

// The sharded CUDA fold-in (shard_fold_in_cuda) on the host: r (a copy) folded with the warp
// distances of gpu_renderings.h; `centre` in the CUDA dense layout. BADGE when probs is given.
// x holds the features' values as float32; `width` is the chunk of their stored type (16 bytes:
// 4 float32, 8 float16/bfloat16, 2 float64).
py::array_t<float> shard_fold_cuda_rendering(const Floats& x, const Floats& centre, const Floats& r,
                                             const py::object& probs_obj, const py::object& y_obj,
                                             const py::object& qn_obj, const py::object& hn_obj, int64_t width) {
  require(x.ndim() == 2 && r.ndim() == 1 && r.shape(0) == x.shape(0), "x must be m x d and r of length m");
  require(width == 2 || width == 4 || width == 8, "width must be 2, 4 or 8");
  const int64_t m = x.shape(0), d = x.shape(1);
  std::vector<float> out = to_vector(r);
  const float* c = centre.data();
  if (probs_obj.is_none()) {
    require(centre.size() == render_padded8(d), "centre must have padded8(d) entries");
    for (int64_t i = 0; i < m; ++i) {
      float& ri = out[static_cast<size_t>(i)];
      if (ri > 0.0f) ri = std::min(ri, render_warp_sq_distance(x.data() + i * d, c, d, width));
    }
    return to_array(out);
  }
  const Floats probs = probs_obj.cast<Floats>(), qn = qn_obj.cast<Floats>(), hn = hn_obj.cast<Floats>();
  const auto y = y_obj.cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>();
  require(probs.ndim() == 2 && probs.shape(0) == m, "probs must be m x C");
  const int64_t C = probs.shape(1);
  require(y.size() == m && qn.size() == m && hn.size() == m, "y, qn and hn must have m entries");
  require(centre.size() == render_padded8(C) + render_padded8(d) + 2, "centre must have padded8(C) + padded8(d) + 2 entries");
  for (int64_t i = 0; i < m; ++i) {
    float& ri = out[static_cast<size_t>(i)];
    const int64_t yi = y.data()[i];
    require(yi >= 0 && yi < C, "y holds a class outside [0, C)");
    if (ri > 0.0f)
      ri = std::min(ri, render_warp_badge_distance(probs.data() + i * C, x.data() + i * d, C, d, yi, qn.data()[i],
                                                   hn.data()[i], c, width));
  }
  return to_array(out);
}

// The CUDA shard's BADGE constants (shard_badge_norms_cuda) on the host: (y, |q|^2, |h|^2).
py::tuple shard_badge_norms_rendering(const Floats& probs, const Floats& h) {
  require(probs.ndim() == 2 && h.ndim() == 2 && probs.shape(0) == h.shape(0) && probs.shape(1) >= 1,
          "probs (m x C, C >= 1) and features (m x d) must have the same rows");
  const int64_t m = probs.shape(0), C = probs.shape(1), d = h.shape(1);
  std::vector<int64_t> y(static_cast<size_t>(m));
  std::vector<float> qn(static_cast<size_t>(m)), hn(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    const RenderedNorms n = render_warp_badge_norms(probs.data() + i * C, h.data() + i * d, C, d);
    y[static_cast<size_t>(i)] = n.y;
    qn[static_cast<size_t>(i)] = n.qn;
    hn[static_cast<size_t>(i)] = n.hn;
  }
  return py::make_tuple(to_array(y), to_array(qn), to_array(hn));
}

}  // namespace

void register_test_hooks(py::module_& m) {
  m.def("radix_select_scores", &radix_select_scores, py::arg("statistic"), py::arg("kind"), py::arg("exclude"),
        py::arg("k"), "The CUDA path's radix selection run on the host over float32 statistics (for tests).");
  m.def("warp_emulated_scores", &warp_emulated_scores, py::arg("x"), py::arg("kind"), py::arg("from_logits"),
        py::arg("lanes") = 0, py::arg("width") = 4, "The CUDA row kernel's arithmetic run on the host (for tests).");
  m.def("render_update", &render_update, py::arg("r"), py::arg("assigned"), py::arg("gaps"), py::arg("distance"),
        py::arg("slot"), py::arg("slack"), py::arg("prune"), py::arg("validate"),
        "The GPU diversity update kernel (two-phase block) run on the host (for tests).");
  m.def("render_choose_d2", &render_choose_d2_hook, py::arg("r"), py::arg("u"),
        "The GPU choose kernel's D² draw run on the host (for tests).");
  m.def("d2_draw_definition", &d2_draw_definition, py::arg("r"), py::arg("u"),
        "The hierarchical D² draw the CPU engine uses (for tests).");
  m.def("uniform01", &uniform01, py::arg("seed"), py::arg("counter"),
        "The kernels' counter-based uniform draw (for tests).");
  m.def("bald_elementary", &bald_elementary, py::arg("x"), py::arg("which"),
        "BALD's polynomial exp or log, element-wise (for tests).");
  m.def("bald_warp_rendering", &bald_warp_rendering, py::arg("x"), py::arg("from_logits"), py::arg("validate"),
        py::arg("sum_tolerance"), "The CUDA BALD kernel's arithmetic order run on the host (for tests).");
  m.def("shard_fold_cuda_rendering", &shard_fold_cuda_rendering, py::arg("x"), py::arg("centre"), py::arg("r"),
        py::arg("probs") = py::none(), py::arg("y") = py::none(), py::arg("qn") = py::none(),
        py::arg("hn") = py::none(), py::arg("width") = 4,
        "The sharded CUDA fold-in's warp arithmetic run on the host (for tests).");
  m.def("shard_badge_norms_rendering", &shard_badge_norms_rendering, py::arg("probs"), py::arg("features"),
        "The CUDA shard's BADGE constants (y, |q|^2, |h|^2) computed on the host (for tests).");
  m.def("scale_to_count", &scale_to_count, py::arg("u"), py::arg("n"), "floor(u * n) clamped to n - 1 (for tests).");
}

}  // namespace asvp
