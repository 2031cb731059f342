// Runtime choice among the CPU kernel variants compiled for different x86 instruction sets.
#pragma once

#include <string>
#include <vector>

namespace asvp {

enum class Isa : int { Base = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);
std::vector<std::string> supported_isas();   // compiled in and supported by this processor
Isa active_isa();
void set_active_isa(const std::string& name);  // throws std::invalid_argument when unsupported

}  // namespace asvp
