#include "daemon/config.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

namespace kvtier {

namespace {

// ---- values as given ------------------------------------------------------------------------

struct Value {
  enum class Kind { kString, kInteger, kFloat, kBool, kList };
  Kind kind = Kind::kString;
  std::string str;                // kString
  int64_t integer = 0;            // kInteger
  double number = 0;              // kFloat
  bool boolean = false;           // kBool
  std::vector<std::string> list;  // kList
  // From the environment or --set: the text as given, for keys that read it as text.
  bool from_text = false;
  std::string text;
  std::string shown;  // for messages: the value as written (TOML syntax)
};

struct Setting {
  Value value;
  std::string origin;  // "kvtierd.toml:12", "environment KVTIERD_X", "--set"
};

std::string Quoted(std::string_view s) {
  std::string o = "\"";
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c == '\n') {
      o += "\\n";
    } else if (c == '\t') {
      o += "\\t";
    } else if (c == '\r') {
      o += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      o += buf;
    } else {
      o += ch;
    }
  }
  return o + "\"";
}

std::string QuotedList(const std::vector<std::string>& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); ++i) o += (i ? ", " : "") + Quoted(v[i]);
  return o + "]";
}

// ---- the TOML subset ------------------------------------------------------------------------

bool BareKeyChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; }

// Reads one file (or one value text). Errors carry "name:line: ". One reader per text, one thread.
class TomlReader {
 public:
  TomlReader(std::string_view text, std::string name) : s_(text), name_(std::move(name)) {}

  // The whole file: calls on_table(path, line) at each header and on_key(key, value, line).
  Status ReadFile(const std::function<Status(const std::vector<std::string>&, int)>& on_table,
                  const std::function<Status(const std::string&, Value, int)>& on_key) {
    std::vector<std::string> table;
    for (;;) {
      SkipSpaceAndNewlines();
      if (AtEnd()) return Status::OK();
      const int line = line_;
      if (Peek() == '[') {
        ++pos_;
        if (Peek() == '[') return Error("arrays of tables ([[...]]) are not supported; use [tenants.NAME] tables");
        table.clear();
        for (;;) {
          SkipSpace();
          std::string part;
          if (Peek() == '"') {
            KVTIER_RETURN_IF_ERROR(BasicString(&part));
          } else {
            while (!AtEnd() && BareKeyChar(Peek())) part += s_[pos_++];
          }
          if (part.empty()) return Error("a table name is missing or has a character TOML bare keys do not allow");
          table.push_back(part);
          SkipSpace();
          if (Peek() == '.') {
            ++pos_;
            continue;
          }
          if (Peek() != ']') return Error("expected ']' to close the table header");
          ++pos_;
          break;
        }
        KVTIER_RETURN_IF_ERROR(EndOfLine());
        KVTIER_RETURN_IF_ERROR(on_table(table, line));
        continue;
      }
      std::string key;
      while (!AtEnd() && BareKeyChar(Peek())) key += s_[pos_++];
      if (key.empty())
        return Error(Peek() == '"' || Peek() == '\'' ? "quoted keys are not supported; write the key bare"
                                                     : "expected a key, a [table] or a comment");
      SkipSpace();
      if (Peek() == '.') {
        std::string dotted = key;
        while (!AtEnd() && (BareKeyChar(Peek()) || Peek() == '.')) dotted += s_[pos_++];
        return Error("dotted keys such as " + dotted + " are not supported; use a [" + key + "] table");
      }
      if (Peek() != '=') return Error("expected '=' after the key " + key);
      ++pos_;
      SkipSpace();
      Value v;
      const size_t start = pos_;
      KVTIER_RETURN_IF_ERROR(ReadValue(&v));
      v.shown = std::string(s_.substr(start, pos_ - start));
      KVTIER_RETURN_IF_ERROR(EndOfLine());
      std::string full;
      for (const std::string& t : table) full += t + ".";
      KVTIER_RETURN_IF_ERROR(on_key(full + key, std::move(v), line));
    }
  }

  // One value and nothing after it (spaces and a comment aside).
  Status ReadOneValue(Value* v) {
    SkipSpace();
    KVTIER_RETURN_IF_ERROR(ReadValue(v));
    SkipSpace();
    if (Peek() == '#') return Status::OK();
    if (!AtEnd()) return Error("unexpected text after the value");
    return Status::OK();
  }

 private:
  bool AtEnd() const { return pos_ >= s_.size(); }
  char Peek() const { return AtEnd() ? '\0' : s_[pos_]; }
  Status Error(const std::string& what) const {
    return Status::InvalidArgument(name_ + ":" + std::to_string(line_) + ": " + what);
  }
  void SkipSpace() {
    while (!AtEnd() && (Peek() == ' ' || Peek() == '\t')) ++pos_;
  }
  void SkipComment() {
    if (Peek() == '#')
      while (!AtEnd() && Peek() != '\n') ++pos_;
  }
  void SkipSpaceAndNewlines() {
    for (;;) {
      SkipSpace();
      SkipComment();
      if (Peek() == '\r' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '\n') ++pos_;
      if (Peek() != '\n') return;
      ++pos_;
      ++line_;
    }
  }
  Status EndOfLine() {
    SkipSpace();
    SkipComment();
    if (Peek() == '\r') ++pos_;
    if (AtEnd()) return Status::OK();
    if (Peek() != '\n') return Error("unexpected text after the value; one key = value per line");
    return Status::OK();
  }

  Status ReadValue(Value* v) {
    const char c = Peek();
    if (c == '"') {
      if (s_.substr(pos_, 3) == "\"\"\"") return Error("multi-line strings are not supported");
      v->kind = Value::Kind::kString;
      return BasicString(&v->str);
    }
    if (c == '\'') {
      if (s_.substr(pos_, 3) == "'''") return Error("multi-line strings are not supported");
      v->kind = Value::Kind::kString;
      return LiteralString(&v->str);
    }
    if (c == '[') return Array(v);
    if (c == '{') return Error("inline tables are not supported; use a [table]");
    std::string word;
    while (!AtEnd() && (std::isalnum(static_cast<unsigned char>(Peek())) || Peek() == '_' || Peek() == '+' ||
                        Peek() == '-' || Peek() == '.'))
      word += s_[pos_++];
    if (word.empty()) return Error("expected a value: a \"string\", a number, true, false or [\"a\", \"b\"]");
    if (word == "true" || word == "false") {
      v->kind = Value::Kind::kBool;
      v->boolean = word == "true";
      return Status::OK();
    }
    return Number(word, v);
  }

  Status Number(const std::string& word, Value* v) {
    std::string digits;
    for (size_t i = 0; i < word.size(); ++i) {
      if (word[i] != '_') {
        digits += word[i];
        continue;
      }
      const bool between = i > 0 && i + 1 < word.size() && std::isdigit(static_cast<unsigned char>(word[i - 1])) &&
                           std::isdigit(static_cast<unsigned char>(word[i + 1]));
      if (!between) return Error("'" + word + "' is not a value; an underscore must sit between digits");
    }
    const bool is_float = digits.find_first_of(".eE") != std::string::npos &&
                          digits.find_first_not_of("0123456789+-.eE") == std::string::npos;
    const char* b = digits.data() + (digits[0] == '+' ? 1 : 0);
    const char* e = digits.data() + digits.size();
    if (!is_float) {
      int64_t x = 0;
      const auto r = std::from_chars(b, e, x);
      if (r.ec == std::errc() && r.ptr == e && b != e) {
        v->kind = Value::Kind::kInteger;
        v->integer = x;
        return Status::OK();
      }
      if (r.ec == std::errc::result_out_of_range) return Error("'" + word + "' is out of range of a 64-bit integer");
    } else {
      double x = 0;
      const auto r = std::from_chars(b, e, x);
      if (r.ec == std::errc() && r.ptr == e && std::isfinite(x)) {
        v->kind = Value::Kind::kFloat;
        v->number = x;
        return Status::OK();
      }
    }
    return Error("'" + word + "' is not a value; strings need quotes (\"" + word + "\")");
  }

  Status BasicString(std::string* out) {
    ++pos_;  // the opening quote
    for (;;) {
      if (AtEnd() || Peek() == '\n') return Error("a string is not closed before the end of the line");
      const char c = s_[pos_++];
      if (c == '"') return Status::OK();
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (AtEnd()) return Error("a string ends in a lone backslash");
      const char esc = s_[pos_++];
      switch (esc) {
        case '"': *out += '"'; break;
        case '\\': *out += '\\'; break;
        case 'n': *out += '\n'; break;
        case 't': *out += '\t'; break;
        case 'r': *out += '\r'; break;
        case 'u': {
          if (pos_ + 4 > s_.size()) return Error("\\u needs four hex digits");
          unsigned cp = 0;
          const auto r = std::from_chars(s_.data() + pos_, s_.data() + pos_ + 4, cp, 16);
          if (r.ec != std::errc() || r.ptr != s_.data() + pos_ + 4) return Error("\\u needs four hex digits");
          pos_ += 4;
          if (cp >= 0xD800 && cp <= 0xDFFF)
            return Error("\\u" + std::to_string(cp) + " is a surrogate, not a character");
          if (cp < 0x80) {
            *out += static_cast<char>(cp);
          } else if (cp < 0x800) {
            *out += static_cast<char>(0xC0 | (cp >> 6));
            *out += static_cast<char>(0x80 | (cp & 0x3F));
          } else {
            *out += static_cast<char>(0xE0 | (cp >> 12));
            *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            *out += static_cast<char>(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: return Error(std::string("unknown escape \\") + esc + " in a string; use \\\\ for a backslash");
      }
    }
  }

  Status LiteralString(std::string* out) {
    ++pos_;
    for (;;) {
      if (AtEnd() || Peek() == '\n') return Error("a string is not closed before the end of the line");
      const char c = s_[pos_++];
      if (c == '\'') return Status::OK();
      *out += c;
    }
  }

  Status Array(Value* v) {
    ++pos_;  // '['
    v->kind = Value::Kind::kList;
    for (;;) {
      SkipSpaceAndNewlines();
      if (Peek() == ']') {
        ++pos_;
        return Status::OK();
      }
      Value item;
      if (Peek() != '"' && Peek() != '\'') {
        if (AtEnd()) return Error("an array is not closed with ']'");
        return Error("arrays hold strings only here: quote each item (\"a\", \"b\")");
      }
      KVTIER_RETURN_IF_ERROR(ReadValue(&item));
      v->list.push_back(std::move(item.str));
      SkipSpaceAndNewlines();
      if (AtEnd()) return Error("an array is not closed with ']'");
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() == ']') continue;
      return Error("expected ',' or ']' in an array");
    }
  }

  std::string_view s_;
  std::string name_;
  size_t pos_ = 0;
  int line_ = 1;
};

// A value from the environment or --set: TOML when it parses as one value, else text.
Value TextValue(const std::string& text) {
  Value v;
  TomlReader r(text, "");
  if (!r.ReadOneValue(&v).ok()) {
    v = Value();
    v.kind = Value::Kind::kString;
    v.str = text;
  }
  v.from_text = true;
  v.text = text;
  v.shown = Quoted(text);
  return v;
}

// ---- conversions: a Status says what is wrong and what is allowed ---------------------------

const char* KindName(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString: return "a string";
    case Value::Kind::kInteger: return "an integer";
    case Value::Kind::kFloat: return "a number with a fraction";
    case Value::Kind::kBool: return "a boolean";
    case Value::Kind::kList: return "an array";
  }
  return "a value";
}

Result<uint64_t> ToUint(const Value& v, uint64_t lo, uint64_t hi) {
  const std::string allowed = "allowed: an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  if (v.kind != Value::Kind::kInteger) return Status::InvalidArgument(std::string("not an integer; ") + allowed);
  if (v.integer < 0 || static_cast<uint64_t>(v.integer) < lo || static_cast<uint64_t>(v.integer) > hi)
    return Status::InvalidArgument("out of range; " + allowed);
  return static_cast<uint64_t>(v.integer);
}

constexpr const char* kSizeAllowed =
    "allowed: a byte count, or a string of an integer and a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB) such as "
    "\"64GiB\"";

Result<uint64_t> ParseSize(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0) return Status::InvalidArgument(std::string("not a size; ") + kSizeAllowed);
  uint64_t n = 0;
  const auto r = std::from_chars(s.data(), s.data() + i, n);
  if (r.ec != std::errc()) return Status::InvalidArgument("too large for 64 bits");
  std::string unit(s.substr(i));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::pair<const char*, uint64_t> kUnits[] = {{"", 1},
                                                            {"b", 1},
                                                            {"kb", 1000},
                                                            {"mb", 1000000},
                                                            {"gb", 1000000000},
                                                            {"tb", 1000000000000},
                                                            {"kib", 1ull << 10},
                                                            {"mib", 1ull << 20},
                                                            {"gib", 1ull << 30},
                                                            {"tib", 1ull << 40}};
  for (const auto& [name, mul] : kUnits) {
    if (unit != name) continue;
    if (n > std::numeric_limits<uint64_t>::max() / mul) return Status::InvalidArgument("too large for 64 bits");
    return n * mul;
  }
  if (unit.find('.') != std::string::npos || unit.find(',') != std::string::npos)
    return Status::InvalidArgument(std::string("fractions are not supported (write 1536MiB, not 1.5GiB); ") +
                                   kSizeAllowed);
  return Status::InvalidArgument("unknown unit '" + std::string(s.substr(i)) + "'; " + kSizeAllowed);
}

Result<uint64_t> ToSize(const Value& v, uint64_t min) {
  Result<uint64_t> n = Status::InvalidArgument("");
  if (v.kind == Value::Kind::kInteger) {
    if (v.integer < 0) return Status::InvalidArgument(std::string("negative; ") + kSizeAllowed);
    n = static_cast<uint64_t>(v.integer);
  } else if (v.kind == Value::Kind::kString) {
    n = ParseSize(v.str);
  } else {
    return Status::InvalidArgument(std::string("not a size (") + KindName(v) + "); " + kSizeAllowed);
  }
  if (!n.ok()) return n;
  if (*n < min)
    return Status::InvalidArgument("below the minimum of " + FormatSize(min) + " (" + std::to_string(min) +
                                   " bytes); " + kSizeAllowed);
  return n;
}

Result<bool> ToBool(const Value& v) {
  if (v.kind != Value::Kind::kBool) return Status::InvalidArgument("not a boolean; allowed: true or false");
  return v.boolean;
}

Result<std::string> ToString(const Value& v) {
  if (v.from_text) return v.text;
  if (v.kind != Value::Kind::kString)
    return Status::InvalidArgument(std::string("not a string (") + KindName(v) + "); allowed: a \"quoted string\"");
  return v.str;
}

Result<std::vector<std::string>> ToList(const Value& v) {
  if (v.kind == Value::Kind::kList) return v.list;
  if (v.from_text) {  // "a,b,c"
    std::vector<std::string> out;
    size_t start = 0;
    for (;;) {
      const size_t comma = v.text.find(',', start);
      out.push_back(v.text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (out.size() == 1 && out[0].empty()) out.clear();
    return out;
  }
  return Status::InvalidArgument(std::string("not an array (") + KindName(v) +
                                 "); allowed: an array of strings such as [\"a\", \"b\"]");
}

Result<double> ToPositive(const Value& v) {
  double x = 0;
  if (v.kind == Value::Kind::kFloat) {
    x = v.number;
  } else if (v.kind == Value::Kind::kInteger) {
    x = static_cast<double>(v.integer);
  } else {
    return Status::InvalidArgument("not a number; allowed: a number above 0 (GB/s), such as 1.5");
  }
  if (!(x > 0) || !std::isfinite(x))
    return Status::InvalidArgument("not above 0; allowed: a number above 0 (GB/s), such as 1.5");
  return x;
}

Status CheckAbsolutePath(const std::string& p) {
  if (p.empty() || p[0] != '/') return Status::InvalidArgument("not an absolute path; allowed: a path starting with /");
  if (p.find('\0') != std::string::npos) return Status::InvalidArgument("contains a NUL byte");
  if (p.size() > 4095) return Status::InvalidArgument("longer than 4095 bytes");
  return Status::OK();
}

// host:port; port within [min_port, 65535]. Hosts: a name, IPv4, or [IPv6].
Status CheckHostPort(const std::string& a, uint32_t min_port) {
  const std::string example = min_port == 0 ? "9713" : "6379";
  const std::string allowed = "allowed: host:port, such as 127.0.0.1:" + example + " or [::1]:" + example;
  const size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size())
    return Status::InvalidArgument("not host:port; " + allowed);
  std::string host = a.substr(0, colon);
  const std::string port = a.substr(colon + 1);
  if (host.front() == '[') {
    if (host.back() != ']' || host.size() < 3)
      return Status::InvalidArgument("an IPv6 host needs [brackets]; " + allowed);
    host = host.substr(1, host.size() - 2);
    for (char c : host)
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.')
        return Status::InvalidArgument("'" + host + "' is not an IPv6 address; " + allowed);
  } else {
    for (char c : host)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_')
        return Status::InvalidArgument("'" + host + "' is not a host name or address; " + allowed);
  }
  uint32_t n = 0;
  const auto r = std::from_chars(port.data(), port.data() + port.size(), n);
  if (r.ec != std::errc() || r.ptr != port.data() + port.size() || n < min_port || n > 65535)
    return Status::InvalidArgument("port '" + port + "' is not in " + std::to_string(min_port) + "..65535; " + allowed);
  return Status::OK();
}

Status CheckTenantName(const std::string& n) {
  bool ok = !n.empty() && n.size() <= 64 && std::isalnum(static_cast<unsigned char>(n[0]));
  for (char c : n) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
  if (!ok)
    return Status::InvalidArgument("tenant name '" + n +
                                   "' is not allowed; allowed: 1-64 characters of A-Z a-z 0-9 _ . -, starting with a "
                                   "letter or digit");
  return Status::OK();
}

// ---- the keys ---------------------------------------------------------------------------------

// One settable key. Tenant keys are named "tenants.*.<key>" and get that tenant.
struct Key {
  std::string name;
  std::function<Status(const Value&, DaemonConfig&, TenantConfig&)> apply;
  // TOML text of the current value; empty: leave it out of the printed config.
  std::function<std::string(const DaemonConfig&, const TenantConfig&)> print;
  bool secret = false;  // never shown
};

// Field accessors: F(expr) gives a lambda returning a reference to `expr` in c (DaemonConfig)
// or t (TenantConfig).
#define KVT_FIELD(expr) \
  [](DaemonConfig & c, TenantConfig & t) -> auto& { return (expr); }
#define KVT_CFIELD(expr) \
  [](const DaemonConfig& c, const TenantConfig& t) -> const auto& { return (expr); }

template <typename F, typename G>
Key UintKey(std::string name, uint64_t lo, uint64_t hi, F field, G get) {
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<uint64_t> x = ToUint(v, lo, hi);
               if (!x.ok()) return x.status();
               field(c, t) = static_cast<std::remove_reference_t<decltype(field(c, t))>>(*x);
               return Status::OK();
             },
             [=](const DaemonConfig& c, const TenantConfig& t) { return std::to_string(get(c, t)); }};
}

template <typename F, typename G>
Key SizeKey(std::string name, uint64_t min, F field, G get, bool zero_omits = false) {
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<uint64_t> x = ToSize(v, min);
               if (!x.ok()) return x.status();
               field(c, t) = *x;
               return Status::OK();
             },
             [=](const DaemonConfig& c, const TenantConfig& t) {
               const uint64_t x = get(c, t);
               if (x == 0 && zero_omits) return std::string();
               const std::string s = FormatSize(x);
               return s.find_first_not_of("0123456789") == std::string::npos ? s : Quoted(s);
             }};
}

template <typename F, typename G>
Key BoolKey(std::string name, F field, G get) {
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<bool> x = ToBool(v);
               if (!x.ok()) return x.status();
               field(c, t) = *x;
               return Status::OK();
             },
             [=](const DaemonConfig& c, const TenantConfig& t) { return std::string(get(c, t) ? "true" : "false"); }};
}

template <typename F, typename G>
Key FloatKey(std::string name, F field, G get) {
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<double> x = ToPositive(v);
               if (!x.ok()) return x.status();
               field(c, t) = *x;
               return Status::OK();
             },
             [=](const DaemonConfig& c, const TenantConfig& t) {
               char buf[64];
               const auto r = std::to_chars(buf, buf + sizeof(buf), get(c, t));
               std::string s(buf, r.ptr);
               if (s.find_first_of(".e") == std::string::npos) s += ".0";
               return s;
             }};
}

// A string checked by `check` (OK or what is wrong; allowed).
template <typename F, typename G>
Key StringKey(std::string name, std::function<Status(const std::string&)> check, F field, G get,
              bool empty_omits = false) {
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<std::string> x = ToString(v);
               if (!x.ok()) return x.status();
               if (check) KVTIER_RETURN_IF_ERROR(check(*x));
               field(c, t) = *x;
               return Status::OK();
             },
             [=](const DaemonConfig& c, const TenantConfig& t) {
               const std::string& s = get(c, t);
               return s.empty() && empty_omits ? std::string() : Quoted(s);
             }};
}

template <typename F, typename G>
Key ListKey(std::string name, std::function<Status(const std::string&)> check, F field, G get) {
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<std::vector<std::string>> x = ToList(v);
               if (!x.ok()) return x.status();
               for (const std::string& item : *x)
                 if (check) {
                   Status st = check(item);
                   if (!st.ok()) return Status::InvalidArgument("item " + Quoted(item) + ": " + st.message());
                 }
               field(c, t) = *x;
               return Status::OK();
             },
             [=](const DaemonConfig& c, const TenantConfig& t) { return QuotedList(get(c, t)); }};
}

template <typename E, typename F, typename G>
Key EnumKey(std::string name, std::vector<std::pair<std::string, E>> names, F field, G get) {
  std::string allowed;
  for (const auto& [n, e] : names) allowed += (allowed.empty() ? "" : ", ") + n;
  return Key{std::move(name),
             [=](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
               Result<std::string> x = ToString(v);
               if (!x.ok()) return Status::InvalidArgument("not a string; allowed: " + allowed);
               for (const auto& [n, e] : names)
                 if (n == *x) {
                   field(c, t) = e;
                   return Status::OK();
                 }
               return Status::InvalidArgument("not one of the choices; allowed: " + allowed);
             },
             [=](const DaemonConfig& c, const TenantConfig& t) {
               for (const auto& [n, e] : names)
                 if (e == get(c, t)) return Quoted(n);
               return Quoted("?");
             }};
}

const std::vector<std::pair<std::string, WritePolicy>> kPolicies = {{"write_back", WritePolicy::kWriteBack},
                                                                    {"write_through", WritePolicy::kWriteThrough},
                                                                    {"none", WritePolicy::kNone}};

Status CheckDataFile(const std::string& p) {
  KVTIER_RETURN_IF_ERROR(CheckAbsolutePath(p));
  if (p.back() == '/') return Status::InvalidArgument("names a directory; allowed: the path of a data file in it");
  return Status::OK();
}

Status CheckSocketPath(const std::string& p) {
  KVTIER_RETURN_IF_ERROR(CheckAbsolutePath(p));
  if (p.size() > 107) return Status::InvalidArgument("longer than the 107 bytes a Unix socket path may have");
  return Status::OK();
}

Status CheckListen(const std::string& a) { return a.empty() ? Status::OK() : CheckHostPort(a, 0); }
Status CheckRedisAddress(const std::string& a) { return CheckHostPort(a, 1); }
Status CheckNonEmpty(const std::string& s) {
  return s.empty() ? Status::InvalidArgument("empty; allowed: a non-empty string") : Status::OK();
}
Status CheckModel(const std::string& m) {
  if (m.empty()) return Status::InvalidArgument("empty; allowed: a model-name prefix, prefix*, or *");
  const size_t star = m.find('*');
  if (star != std::string::npos && star + 1 != m.size())
    return Status::InvalidArgument("a '*' may only end the pattern; allowed: a model-name prefix, prefix*, or *");
  return Status::OK();
}
Status CheckEnvName(const std::string& n) {
  bool ok = !n.empty() && !std::isdigit(static_cast<unsigned char>(n[0]));
  for (char c : n) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
  return ok ? Status::OK()
            : Status::InvalidArgument("not an environment variable name; allowed: [A-Za-z_][A-Za-z0-9_]*");
}
Status CheckToken(const std::string& token) {
  if (token.size() < 16)
    return Status::InvalidArgument(
        "shorter than 16 characters; allowed: 16 to 1024 printable characters without "
        "spaces (e.g. the output of `openssl rand -hex 32`)");
  if (token.size() > 1024) return Status::InvalidArgument("longer than 1024 characters");
  for (char c : token)
    if (c <= ' ' || c == 0x7f)
      return Status::InvalidArgument("holds a space or control character; allowed: printable characters only");
  return Status::OK();
}

const std::vector<Key>& Keys() {
  static const std::vector<Key>* keys = new std::vector<Key>{
      StringKey("socket", CheckSocketPath, KVT_FIELD(c.socket), KVT_CFIELD(c.socket)),
      BoolKey("allow_anonymous", KVT_FIELD(c.allow_anonymous), KVT_CFIELD(c.allow_anonymous)),
      UintKey("max_connections", 1, 1u << 20, KVT_FIELD(c.server.max_connections),
              KVT_CFIELD(c.server.max_connections)),
      UintKey(
          "handshake_timeout_ms", 1, 600000,
          [](DaemonConfig & c, TenantConfig&) -> auto& { return c.server.handshake_timeout; },
          [](const DaemonConfig& c, const TenantConfig&) { return c.server.handshake_timeout.count(); }),
      UintKey(
          "io_timeout_ms", 1, 600000, [](DaemonConfig & c, TenantConfig&) -> auto& { return c.server.io_timeout; },
          [](const DaemonConfig& c, const TenantConfig&) { return c.server.io_timeout.count(); }),
      StringKey("metrics.listen", CheckListen, KVT_FIELD(c.metrics_listen), KVT_CFIELD(c.metrics_listen)),
      // Host tier (T1).
      SizeKey("host.capacity", 1 << 20, KVT_FIELD(c.store.host_capacity_bytes),
              KVT_CFIELD(c.store.host_capacity_bytes)),
      EnumKey<HugePages>("host.huge_pages",
                         {{"auto", HugePages::kAuto}, {"on", HugePages::kRequire}, {"off", HugePages::kOff}},
                         KVT_FIELD(c.store.huge_pages), KVT_CFIELD(c.store.huge_pages)),
      BoolKey("host.prefault", KVT_FIELD(c.store.prefault), KVT_CFIELD(c.store.prefault)),
      // The Store.
      UintKey("store.worker_threads", 1, 256, KVT_FIELD(c.store.worker_threads), KVT_CFIELD(c.store.worker_threads)),
      UintKey("store.max_prefetches", 0, 4096, KVT_FIELD(c.store.max_prefetches), KVT_CFIELD(c.store.max_prefetches)),
      UintKey("store.max_request_tokens", 1, uint64_t{1} << 31, KVT_FIELD(c.store.max_request_tokens),
              KVT_CFIELD(c.store.max_request_tokens)),
      // NVMe tier (T2).
      BoolKey("nvme.enabled", KVT_FIELD(c.store.nvme.enabled), KVT_CFIELD(c.store.nvme.enabled)),
      ListKey("nvme.paths", CheckDataFile, KVT_FIELD(c.store.nvme.paths), KVT_CFIELD(c.store.nvme.paths)),
      SizeKey("nvme.capacity", 0, KVT_FIELD(c.store.nvme.capacity_bytes), KVT_CFIELD(c.store.nvme.capacity_bytes)),
      StringKey(
          "nvme.metadata_dir", [](const std::string& p) { return p.empty() ? Status::OK() : CheckAbsolutePath(p); },
          KVT_FIELD(c.store.nvme.metadata_dir), KVT_CFIELD(c.store.nvme.metadata_dir)),
      UintKey("nvme.queue_depth", 1, 4096, KVT_FIELD(c.store.nvme.queue_depth), KVT_CFIELD(c.store.nvme.queue_depth)),
      BoolKey("nvme.buffered", KVT_FIELD(c.store.nvme.buffered), KVT_CFIELD(c.store.nvme.buffered)),
      EnumKey<WritePolicy>("nvme.write_policy", kPolicies, KVT_FIELD(c.store.nvme.policy),
                           KVT_CFIELD(c.store.nvme.policy)),
      // Redis tier (T3).
      BoolKey("redis.enabled", KVT_FIELD(c.store.redis.enabled), KVT_CFIELD(c.store.redis.enabled)),
      BoolKey("redis.cluster", KVT_FIELD(c.store.redis.cluster), KVT_CFIELD(c.store.redis.cluster)),
      ListKey("redis.addresses", CheckRedisAddress, KVT_FIELD(c.store.redis.addresses),
              KVT_CFIELD(c.store.redis.addresses)),
      StringKey("redis.username", nullptr, KVT_FIELD(c.store.redis.username), KVT_CFIELD(c.store.redis.username)),
      [] {
        Key k =
            StringKey("redis.password", nullptr, KVT_FIELD(c.store.redis.password), KVT_CFIELD(c.store.redis.password));
        k.print = [](const DaemonConfig& c, const TenantConfig&) {
          return c.store.redis.password.empty() ? Quoted("") : Quoted("********");
        };
        k.secret = true;
        return k;
      }(),
      UintKey("redis.pool_size", 1, 1024, KVT_FIELD(c.store.redis.pool_size), KVT_CFIELD(c.store.redis.pool_size)),
      UintKey("redis.connect_timeout_ms", 1, 600000, KVT_FIELD(c.store.redis.connect_timeout_ms),
              KVT_CFIELD(c.store.redis.connect_timeout_ms)),
      UintKey("redis.op_timeout_ms", 1, 600000, KVT_FIELD(c.store.redis.op_timeout_ms),
              KVT_CFIELD(c.store.redis.op_timeout_ms)),
      UintKey("redis.op_timeout_per_mib_us", 0, 60000000, KVT_FIELD(c.store.redis.op_timeout_per_mib_us),
              KVT_CFIELD(c.store.redis.op_timeout_per_mib_us)),
      UintKey("redis.lookup_timeout_ms", 1, 600000, KVT_FIELD(c.store.redis.lookup_timeout_ms),
              KVT_CFIELD(c.store.redis.lookup_timeout_ms)),
      UintKey("redis.ttl_seconds", 0, 0xffffffffu, KVT_FIELD(c.store.redis.ttl_seconds),
              KVT_CFIELD(c.store.redis.ttl_seconds)),
      BoolKey("redis.lz4", KVT_FIELD(c.store.redis.lz4), KVT_CFIELD(c.store.redis.lz4)),
      SizeKey("redis.get_piece", 0, KVT_FIELD(c.store.redis.get_piece_bytes), KVT_CFIELD(c.store.redis.get_piece_bytes)),
      StringKey("redis.key_prefix", CheckNonEmpty, KVT_FIELD(c.store.redis.key_prefix),
                KVT_CFIELD(c.store.redis.key_prefix)),
      SizeKey("redis.capacity", 0, KVT_FIELD(c.store.redis.capacity_bytes), KVT_CFIELD(c.store.redis.capacity_bytes)),
      EnumKey<WritePolicy>("redis.write_policy", kPolicies, KVT_FIELD(c.store.redis.policy),
                           KVT_CFIELD(c.store.redis.policy)),
      BoolKey("redis.probe_on_miss", KVT_FIELD(c.store.redis.probe_on_miss), KVT_CFIELD(c.store.redis.probe_on_miss)),
      // Planner and admission.
      BoolKey("planner.enabled", KVT_FIELD(c.store.planner.enabled), KVT_CFIELD(c.store.planner.enabled)),
      FloatKey("planner.host_gbps", KVT_FIELD(c.store.planner.host_gbps), KVT_CFIELD(c.store.planner.host_gbps)),
      FloatKey("planner.nvme_gbps", KVT_FIELD(c.store.planner.nvme_gbps), KVT_CFIELD(c.store.planner.nvme_gbps)),
      FloatKey("planner.redis_gbps", KVT_FIELD(c.store.planner.redis_gbps), KVT_CFIELD(c.store.planner.redis_gbps)),
      UintKey("admission.min_tokens", 0, 0xffffffffu, KVT_FIELD(c.store.admission.min_tokens),
              KVT_CFIELD(c.store.admission.min_tokens)),
      BoolKey("admission.nvme_second_hit", KVT_FIELD(c.store.admission.nvme_second_hit),
              KVT_CFIELD(c.store.admission.nvme_second_hit)),
      BoolKey("admission.redis_second_hit", KVT_FIELD(c.store.admission.redis_second_hit),
              KVT_CFIELD(c.store.admission.redis_second_hit)),
      // Tenants.
      [] {
        Key k = StringKey("tenants.*.token", CheckToken, KVT_FIELD(t.token), KVT_CFIELD(t.token));
        auto apply = k.apply;
        k.apply = [apply](const Value& v, DaemonConfig& c, TenantConfig& t) -> Status {
          KVTIER_RETURN_IF_ERROR(apply(v, c, t));
          t.token_inline = true;
          return Status::OK();
        };
        k.print = [](const DaemonConfig&, const TenantConfig& t) {
          return t.token_inline ? Quoted("********") : std::string();
        };
        k.secret = true;
        return k;
      }(),
      StringKey("tenants.*.token_file", CheckAbsolutePath, KVT_FIELD(t.token_file), KVT_CFIELD(t.token_file), true),
      StringKey("tenants.*.token_env", CheckEnvName, KVT_FIELD(t.token_env), KVT_CFIELD(t.token_env), true),
      ListKey("tenants.*.models", CheckModel, KVT_FIELD(t.models), KVT_CFIELD(t.models)),
      SizeKey("tenants.*.host_capacity", 1 << 20, KVT_FIELD(t.host_capacity_bytes), KVT_CFIELD(t.host_capacity_bytes),
              true),
      SizeKey("tenants.*.nvme_capacity", 1, KVT_FIELD(t.nvme_capacity_bytes), KVT_CFIELD(t.nvme_capacity_bytes), true),
  };
  return *keys;
}

#undef KVT_FIELD
#undef KVT_CFIELD

const std::set<std::string>& Tables() {
  static const std::set<std::string>* t =
      new std::set<std::string>{"metrics", "host", "store", "nvme", "redis", "planner", "admission"};
  return *t;
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The candidate nearest to `key`, if one is near enough to be a likely typo; else "".
std::string Nearest(const std::string& key, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, key.size() / 4) + 1;
  for (const std::string& c : candidates) {
    const size_t d = EditDistance(key, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

std::string DidYouMean(const std::string& key, const std::vector<std::string>& candidates) {
  const std::string best = Nearest(key, candidates);
  return best.empty() ? "" : "; did you mean " + best + "?";
}

// "tenants.NAME.key" -> ("NAME", "key"); false for any other key.
bool SplitTenantKey(const std::string& key, std::string* name, std::string* field) {
  if (!key.starts_with("tenants.")) return false;
  const size_t dot = key.rfind('.');
  if (dot <= 8) return false;
  *name = key.substr(8, dot - 8);
  *field = key.substr(dot + 1);
  return true;
}

// What the config is built from: settings by key (the latest source's), tenants declared.
struct Collected {
  std::map<std::string, Setting> settings;
  std::map<std::string, std::string> tenant_tables;  // name -> where its [tenants.NAME] is
  std::vector<std::string> errors;
};

Status ReadConfigFile(const std::string& path, Collected* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status::InvalidArgument("config file " + path + ": cannot open: " + std::strerror(errno) +
                                   "; pass an existing file to --config");
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Status::InvalidArgument("config file " + path + ": read: " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > (16u << 20)) {
      ::close(fd);
      return Status::InvalidArgument("config file " + path + " is larger than 16 MiB; is it the right file?");
    }
  }
  ::close(fd);
  std::set<std::string> tables_seen;
  std::map<std::string, int> keys_seen;
  TomlReader reader(text, path);
  return reader.ReadFile(
      [&](const std::vector<std::string>& table, int line) -> Status {
        const std::string where = path + ":" + std::to_string(line);
        std::string joined;
        for (const std::string& t : table) joined += (joined.empty() ? "" : ".") + t;
        if (!tables_seen.insert(joined).second)
          return Status::InvalidArgument(where + ": table [" + joined + "] is opened twice; merge the two");
        if (table.size() == 2 && table[0] == "tenants") {
          Status st = CheckTenantName(table[1]);
          if (!st.ok()) return Status::InvalidArgument(where + ": [" + joined + "]: " + st.message());
          out->tenant_tables[table[1]] = where;
          return Status::OK();
        }
        if (table.size() == 1 && (Tables().count(table[0]) || table[0] == "tenants")) return Status::OK();
        std::vector<std::string> names(Tables().begin(), Tables().end());
        names.push_back("tenants.NAME");
        std::string hint = DidYouMean(joined, names);
        return Status::InvalidArgument(where + ": unknown table [" + joined + "]" +
                                       (hint.empty() ? "; tables: metrics, host, store, nvme, redis, planner, "
                                                       "admission, tenants.NAME"
                                                     : hint));
      },
      [&](const std::string& key, Value v, int line) -> Status {
        const std::string where = path + ":" + std::to_string(line);
        auto [it, fresh] = keys_seen.emplace(key, line);
        if (!fresh)
          return Status::InvalidArgument(where + ": " + key + " is set twice (first at line " +
                                         std::to_string(it->second) + ")");
        out->settings[key] = Setting{std::move(v), where};
        return Status::OK();
      });
}

void ReadEnvironment(const std::vector<std::string>& env, Collected* out) {
  for (const std::string& e : env) {
    if (!e.starts_with("KVTIERD_")) continue;
    const size_t eq = e.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = e.substr(0, eq);
    std::string key;
    for (size_t i = 8; i < name.size(); ++i) {
      if (name.compare(i, 2, "__") == 0) {
        key += '.';
        ++i;
      } else {
        key += static_cast<char>(std::tolower(static_cast<unsigned char>(name[i])));
      }
    }
    out->settings[key] = Setting{TextValue(e.substr(eq + 1)), "environment " + name};
  }
}

// The first NAME=value entry, as getenv would find it.
std::optional<std::string> EnvLookup(const std::vector<std::string>& env, const std::string& name) {
  for (const std::string& e : env)
    if (e.size() > name.size() && e.compare(0, name.size(), name) == 0 && e[name.size()] == '=')
      return e.substr(name.size() + 1);
  return std::nullopt;
}

Status ReadTokenFile(const std::string& path, std::string* token) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::InvalidArgument(std::string("cannot open: ") + std::strerror(errno));
  char buf[4097];
  size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(fd, buf + got, sizeof(buf) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Status::InvalidArgument(std::string("cannot read: ") + std::strerror(err));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got == sizeof(buf)) break;
  }
  ::close(fd);
  if (got > 4096) return Status::InvalidArgument("larger than 4096 bytes; a token file holds only the token");
  std::string t(buf, got);
  while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
  *token = std::move(t);
  return Status::OK();
}

// The value for a message; never a secret's (an unknown key that looks like one included).
std::string ShowValue(const Key* key, const std::string& name, const Value& v) {
  const bool secret = key != nullptr
                          ? key->secret
                          : name.find("token") != std::string::npos || name.find("password") != std::string::npos ||
                                name.find("secret") != std::string::npos;
  if (secret) {
    const size_t n = v.from_text ? v.text.size() : v.str.size();
    return "<hidden, " + std::to_string(n) + " characters>";
  }
  return v.shown;
}

}  // namespace

std::string FormatSize(uint64_t bytes) {
  if (bytes == 0) return "0";
  static const std::pair<const char*, int> kUnits[] = {{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}};
  for (const auto& [name, shift] : kUnits)
    if (bytes % (uint64_t{1} << shift) == 0) return std::to_string(bytes >> shift) + name;
  return std::to_string(bytes);
}

Result<DaemonConfig> LoadDaemonConfig(const ConfigSources& sources) {
  Collected in;
  if (!sources.file.empty()) {
    Status st = ReadConfigFile(sources.file, &in);
    if (!st.ok()) return st;  // a syntax error: what follows it cannot be read reliably
  }
  ReadEnvironment(sources.environment, &in);
  for (const std::string& s : sources.sets) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0) {
      in.errors.push_back("--set " + s + ": expected section.key=value");
      continue;
    }
    in.settings[s.substr(0, eq)] = Setting{TextValue(s.substr(eq + 1)), "--set"};
  }

  // Tenants named by any source, so that a table-less tenant from --set exists too.
  std::map<std::string, std::string> tenant_where = in.tenant_tables;
  for (const auto& [key, setting] : in.settings) {
    std::string name, field;
    if (SplitTenantKey(key, &name, &field) && !tenant_where.count(name)) tenant_where[name] = setting.origin;
  }

  DaemonConfig config;
  std::map<std::string, TenantConfig> tenants;
  for (const auto& [name, where] : tenant_where) {
    Status st = CheckTenantName(name);
    if (!st.ok()) {
      in.errors.push_back(where + ": " + st.message());
      continue;
    }
    TenantConfig t;
    t.name = name;
    t.models = {"*"};
    tenants.emplace(name, std::move(t));
  }

  std::set<std::string> env_vars_named_by_tenants;
  // token_env names are needed before the unknown-variable check; they are plain strings.
  for (const auto& [key, setting] : in.settings) {
    std::string name, field;
    if (SplitTenantKey(key, &name, &field) && field == "token_env") {
      Result<std::string> v = ToString(setting.value);
      if (v.ok()) env_vars_named_by_tenants.insert(*v);
    }
  }

  std::map<std::string, std::string> origin;  // key -> where it was set, for later checks
  for (const auto& [key, setting] : in.settings) {
    std::string tenant_name, field;
    const bool is_tenant = SplitTenantKey(key, &tenant_name, &field);
    const std::string pattern = is_tenant ? "tenants.*." + field : key;
    const Key* spec = nullptr;
    for (const Key& k : Keys())
      if (k.name == pattern) spec = &k;
    if (spec == nullptr) {
      std::string var;
      if (setting.origin.starts_with("environment ")) var = setting.origin.substr(12);
      if (!var.empty() && env_vars_named_by_tenants.count(var)) continue;  // a token_env variable
      std::vector<std::string> candidates;
      for (const Key& k : Keys())
        candidates.push_back(is_tenant && k.name.starts_with("tenants.*.")
                                 ? "tenants." + tenant_name + "." + k.name.substr(10)
                                 : k.name);
      const std::string nearest = Nearest(key, candidates);
      // A misspelt secret is still a secret.
      const Key* like = nullptr;
      for (size_t i = 0; i < candidates.size(); ++i)
        if (!nearest.empty() && candidates[i] == nearest) like = &Keys()[i];
      std::string hint = nearest.empty() ? "" : "; did you mean " + nearest + "?";
      if (is_tenant && hint.empty())
        hint = "; tenant keys: token, token_file, token_env, models, host_capacity, nvme_capacity";
      in.errors.push_back(setting.origin + ": unknown key " + key + " (= " +
                          ShowValue(like != nullptr && like->secret ? like : nullptr, key, setting.value) + ")" + hint);
      continue;
    }
    TenantConfig scratch;
    TenantConfig* t = &scratch;
    if (is_tenant) {
      auto it = tenants.find(tenant_name);
      if (it == tenants.end()) continue;  // its name was refused above
      t = &it->second;
    }
    Status st = spec->apply(setting.value, config, *t);
    if (!st.ok()) {
      in.errors.push_back(setting.origin + ": " + key + " = " + ShowValue(spec, key, setting.value) + ": " +
                          st.message());
      continue;
    }
    origin[key] = setting.origin;
  }

  auto where = [&](const std::string& key) {
    auto it = origin.find(key);
    return it == origin.end() ? std::string("config") : it->second;
  };
  auto problem = [&](const std::string& key, const std::string& what) {
    in.errors.push_back(where(key) + ": " + key + ": " + what);
  };

  // Tenants.
  if (config.allow_anonymous && !tenants.empty()) {
    problem("allow_anonymous", "true, and [tenants." + tenants.begin()->first +
                                   "] is configured too; use either named tenants or the anonymous one");
  } else if (!config.allow_anonymous && tenant_where.empty()) {
    in.errors.push_back(
        "config: no tenants: add a [tenants.NAME] table with a token (see kvtierd.example.toml), or "
        "set allow_anonymous = true to serve every process that can open the socket as tenant \"\"");
  }
  for (auto& [name, t] : tenants) {
    const std::string prefix = "tenants." + name + ".";
    const int sources_set = (t.token_inline ? 1 : 0) + (t.token_file.empty() ? 0 : 1) + (t.token_env.empty() ? 0 : 1);
    if (sources_set == 0) {
      in.errors.push_back(tenant_where[name] + ": tenant " + name + " has no token; set one of tenants." + name +
                          ".token, token_file or token_env");
    } else if (sources_set > 1) {
      in.errors.push_back(tenant_where[name] + ": tenant " + name +
                          " sets more than one of token, token_file and token_env; keep one");
    } else if (!t.token_file.empty()) {
      Status st = ReadTokenFile(t.token_file, &t.token);
      if (st.ok()) st = CheckToken(t.token);
      if (!st.ok()) problem(prefix + "token_file", Quoted(t.token_file) + ": the token file: " + st.message());
    } else if (!t.token_env.empty()) {
      const std::optional<std::string> value = EnvLookup(sources.environment, t.token_env);
      t.token = value.value_or("");
      Status st = value ? CheckToken(t.token)
                        : Status::InvalidArgument(
                              "not set in kvtierd's environment; allowed: the name of a "
                              "variable that holds the token");
      if (!st.ok()) problem(prefix + "token_env", Quoted(t.token_env) + ": the variable: " + st.message());
    }
    if (t.models.empty())
      problem(prefix + "models",
              "[]: the tenant could register no model; allowed: prefixes such as [\"acme/\"], "
              "or [\"*\"] for any");
    for (std::string& m : t.models)
      if (m.size() > 1 && m.back() == '*') m.pop_back();  // "acme/*" is the prefix "acme/"
    if (t.nvme_capacity_bytes != 0 && !config.store.nvme.enabled)
      problem(prefix + "nvme_capacity", "set while nvme.enabled = false; enable the NVMe tier or remove it");
  }
  if (config.allow_anonymous && tenants.empty()) {
    TenantConfig anon;
    anon.models = {"*"};
    tenants.emplace("", std::move(anon));
  }

  // NVMe.
  const NvmeConfig& nv = config.store.nvme;
  if (nv.enabled) {
    if (nv.paths.empty())
      problem("nvme.paths",
              "empty while nvme.enabled = true; allowed: absolute paths of data files, such as "
              "[\"/var/lib/kvtier/nvme0.data\"]");
    std::set<std::string> seen;
    for (const std::string& p : nv.paths)
      if (!seen.insert(p).second) problem("nvme.paths", "names " + Quoted(p) + " twice; each data file once");
    bool capacity_missing = false;
    for (const auto& [name, t] : tenants) capacity_missing |= t.nvme_capacity_bytes == 0 && nv.capacity_bytes == 0;
    if (capacity_missing)
      problem("nvme.capacity",
              "0 while nvme.enabled = true (and a tenant sets no nvme_capacity); allowed: a size "
              "per tenant such as \"100GiB\"");
  }
  // Redis.
  if (config.store.redis.enabled && config.store.redis.addresses.empty())
    problem("redis.addresses", "empty while redis.enabled = true; allowed: [\"host:port\", ...]");

  if (!in.errors.empty()) {
    std::string all;
    for (const std::string& e : in.errors) all += (all.empty() ? "" : "\n") + e;
    return Status::InvalidArgument(all);
  }
  for (auto& [name, t] : tenants) config.tenants.push_back(std::move(t));
  return config;
}

StoreConfig TenantStoreConfig(const DaemonConfig& config, const TenantConfig& tenant) {
  StoreConfig s = config.store;
  s.shared_host_region = true;
  if (tenant.host_capacity_bytes != 0) s.host_capacity_bytes = tenant.host_capacity_bytes;
  if (tenant.nvme_capacity_bytes != 0) s.nvme.capacity_bytes = tenant.nvme_capacity_bytes;
  if (!tenant.name.empty()) {
    for (std::string& p : s.nvme.paths) {
      const size_t slash = p.rfind('/');
      p = p.substr(0, slash + 1) + tenant.name + "/" + p.substr(slash + 1);
    }
    if (!s.nvme.metadata_dir.empty()) {
      while (s.nvme.metadata_dir.size() > 1 && s.nvme.metadata_dir.back() == '/') s.nvme.metadata_dir.pop_back();
      s.nvme.metadata_dir += "/" + tenant.name;
    }
    s.redis.key_prefix += ":" + tenant.name;
  }
  return s;
}

std::string PrintDaemonConfig(const DaemonConfig& config) {
  std::string out = "# kvtierd: the effective configuration (tokens and passwords masked)\n";
  std::string section = "";
  TenantConfig none;
  for (const Key& k : Keys()) {
    if (k.name.starts_with("tenants.")) continue;
    const size_t dot = k.name.find('.');
    const std::string sec = dot == std::string::npos ? "" : k.name.substr(0, dot);
    if (sec != section) {
      out += "\n[" + sec + "]\n";
      section = sec;
    }
    const std::string v = k.print(config, none);
    if (!v.empty()) out += k.name.substr(dot == std::string::npos ? 0 : dot + 1) + " = " + v + "\n";
  }
  for (const TenantConfig& t : config.tenants) {
    if (t.name.empty()) {
      out += "\n# the anonymous tenant \"\" (allow_anonymous = true): no token, any model\n";
      continue;
    }
    out += "\n[tenants." + t.name + "]\n";
    for (const Key& k : Keys()) {
      if (!k.name.starts_with("tenants.*.")) continue;
      const std::string v = k.print(config, t);
      if (!v.empty()) out += k.name.substr(10) + " = " + v + "\n";
    }
  }
  return out;
}

}  // namespace kvtier
