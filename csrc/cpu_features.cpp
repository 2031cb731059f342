// Picks the CPU kernel variant for this processor: the widest instruction set that was compiled
// in and that the processor supports, unless ASVP_FAST_ISA or set_active_isa() asks for another.
#include "cpu_features.h"

#include <cstdlib>
#include <stdexcept>

#include "bald.h"
#include "diversity.h"
#include "uncertainty.h"

namespace asvp {

#define ASVP_DECLARE_VARIANT(ns)                                        \
  namespace ns {                                                         \
  void uncertainty_cpu_kernel(const UncertaintyParams&, RowError&);      \
  void diversity_cpu_kernel(const DiversityParams&, DiversityStats&);    \
  void bald_cpu_kernel(const BaldParams&, RowError&);                    \
  void shard_fold_in_kernel(const ShardFoldIn&);                         \
  }
ASVP_DECLARE_VARIANT(isa_base)
#if defined(ASVP_HAVE_AVX2)
ASVP_DECLARE_VARIANT(isa_avx2)
#endif
#if defined(ASVP_HAVE_AVX512)
ASVP_DECLARE_VARIANT(isa_avx512)
#endif
#undef ASVP_DECLARE_VARIANT

namespace {

bool processor_supports(Isa isa) {
  switch (isa) {
    case Isa::Base: return true;
#if defined(ASVP_HAVE_AVX2)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
#if defined(ASVP_HAVE_AVX512)
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    default: return false;
  }
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::Base, Isa::Avx2, Isa::Avx512})
    if (name == isa_name(isa)) {
      if (!processor_supports(isa))
        throw std::invalid_argument("instruction set '" + name + "' is not compiled in or not supported by this processor");
      return isa;
    }
  throw std::invalid_argument("unknown instruction set '" + name + "' (expected base, avx2 or avx512)");
}

Isa best_isa() {
  if (const char* forced = std::getenv("ASVP_FAST_ISA"); forced && *forced) return parse_isa(forced);
  for (Isa isa : {Isa::Avx512, Isa::Avx2})
    if (processor_supports(isa)) return isa;
  return Isa::Base;
}

Isa& active() {
  static Isa isa = best_isa();
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Base: return "base";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "unknown";
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (Isa isa : {Isa::Base, Isa::Avx2, Isa::Avx512})
    if (processor_supports(isa)) names.emplace_back(isa_name(isa));
  return names;
}

Isa active_isa() { return active(); }

void set_active_isa(const std::string& name) { active() = parse_isa(name); }

void uncertainty_cpu(const UncertaintyParams& params, RowError& error) {
  switch (active()) {
#if defined(ASVP_HAVE_AVX512)
    case Isa::Avx512: return isa_avx512::uncertainty_cpu_kernel(params, error);
#endif
#if defined(ASVP_HAVE_AVX2)
    case Isa::Avx2: return isa_avx2::uncertainty_cpu_kernel(params, error);
#endif
    default: return isa_base::uncertainty_cpu_kernel(params, error);
  }
}

void diversity_cpu(const DiversityParams& params, DiversityStats& stats) {
  switch (active()) {
#if defined(ASVP_HAVE_AVX512)
    case Isa::Avx512: return isa_avx512::diversity_cpu_kernel(params, stats);
#endif
#if defined(ASVP_HAVE_AVX2)
    case Isa::Avx2: return isa_avx2::diversity_cpu_kernel(params, stats);
#endif
    default: return isa_base::diversity_cpu_kernel(params, stats);
  }
}

void bald_cpu(const BaldParams& params, RowError& error) {
  switch (active()) {
#if defined(ASVP_HAVE_AVX512)
    case Isa::Avx512: return isa_avx512::bald_cpu_kernel(params, error);
#endif
#if defined(ASVP_HAVE_AVX2)
    case Isa::Avx2: return isa_avx2::bald_cpu_kernel(params, error);
#endif
    default: return isa_base::bald_cpu_kernel(params, error);
  }
}

void shard_fold_in(const ShardFoldIn& params) {
  switch (active()) {
#if defined(ASVP_HAVE_AVX512)
    case Isa::Avx512: return isa_avx512::shard_fold_in_kernel(params);
#endif
#if defined(ASVP_HAVE_AVX2)
    case Isa::Avx2: return isa_avx2::shard_fold_in_kernel(params);
#endif
    default: return isa_base::shard_fold_in_kernel(params);
  }
}

}  // namespace asvp
