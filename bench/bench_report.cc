#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "bench/bench.h"

namespace kvtier::bench {

Result<Args> Args::Parse(const std::vector<std::string>& argv, const std::vector<std::string>& known,
                         const std::vector<std::string>& boolean_flags) {
  Args a;
  auto is = [](const std::vector<std::string>& v, const std::string& s) {
    for (const auto& x : v)
      if (x == s) return true;
    return false;
  };
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& w = argv[i];
    if (w.rfind("--", 0) != 0)
      return Status::InvalidArgument("unexpected argument '" + w + "'; see --help");
    std::string name = w.substr(2), value;
    const size_t eq = name.find('=');
    const bool has_eq = eq != std::string::npos;
    if (has_eq) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (is(boolean_flags, name)) {
      a.values_[name] = has_eq ? value : "1";
      continue;
    }
    if (!is(known, name)) return Status::InvalidArgument("unknown option --" + name + "; see --help");
    if (!has_eq) {
      if (i + 1 >= argv.size()) return Status::InvalidArgument("option --" + name + " needs a value");
      value = argv[++i];
    }
    a.values_[name] = value;
  }
  return a;
}

std::string Args::Get(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

Result<double> Args::GetDouble(const std::string& name, double def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  if (end == it->second.c_str() || *end != '\0' || !(v >= 0))
    return Status::InvalidArgument("--" + name + " " + it->second + ": expected a non-negative number");
  return v;
}

Result<uint64_t> Args::GetUint(const std::string& name, uint64_t def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  unsigned long long v = std::strtoull(it->second.c_str(), &end, 10);
  if (end == it->second.c_str() || *end != '\0' || it->second[0] == '-')
    return Status::InvalidArgument("--" + name + " " + it->second + ": expected a non-negative integer");
  return static_cast<uint64_t>(v);
}

Result<std::vector<double>> Args::GetDoubleList(const std::string& name, const std::vector<double>& def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  std::vector<double> out;
  std::stringstream ss(it->second);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0' || !(v > 0))
      return Status::InvalidArgument("--" + name + " " + it->second + ": expected positive numbers separated by commas");
    out.push_back(v);
  }
  if (out.empty()) return Status::InvalidArgument("--" + name + " is empty");
  return out;
}

Report& Report::Add(const std::string& key, const std::string& value) {
  fields_.push_back({key, value, true});
  return *this;
}

Report& Report::Add(const std::string& key, double value, int precision) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, value);
  fields_.push_back({key, buf, false});
  return *this;
}

Report& Report::Add(const std::string& key, uint64_t value) {
  fields_.push_back({key, std::to_string(value), false});
  return *this;
}

void Report::Print() {
  std::string line;
  if (json_) {
    line = "{";
    for (size_t i = 0; i < fields_.size(); ++i) {
      if (i) line += ", ";
      line += "\"" + fields_[i].key + "\": ";
      if (fields_[i].quoted) {
        line += '"';
        for (char c : fields_[i].text) {
          if (c == '"' || c == '\\') line += '\\';
          line += c;
        }
        line += '"';
      } else {
        line += fields_[i].text;
      }
    }
    line += "}";
  } else {
    for (const Field& f : fields_) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s=%-10s ", f.key.c_str(), f.text.c_str());
      line += buf;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  fields_.clear();
}

}  // namespace kvtier::bench
