#include "bench/trace.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <unordered_set>

namespace kvtier::bench {
namespace {

// Reads one JSON line. Positions in messages are 1-based columns.
class LineReader {
 public:
  LineReader(std::string_view s, const std::string& where) : s_(s), where_(where) {}

  Status Error(const std::string& what) const {
    return Status::InvalidArgument(where_ + ":" + std::to_string(pos_ + 1) + ": " + what);
  }
  void SkipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\r' || s_[pos_] == '\n')) ++pos_;
  }
  bool AtEnd() {
    SkipSpace();
    return pos_ >= s_.size();
  }
  char Peek() {
    SkipSpace();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  Status Expect(char c) {
    if (Peek() != c) return Error(std::string("expected '") + c + "'" + Found());
    ++pos_;
    return Status::OK();
  }
  std::string Found() {
    if (pos_ >= s_.size()) return ", found the end of the line";
    return std::string(", found '") + s_[pos_] + "'";
  }

  Status String(std::string* out) {
    KVTIER_RETURN_IF_ERROR(Expect('"'));
    out->clear();
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (static_cast<unsigned char>(c) < 0x20) return Error("control character in a string");
      if (c == '\\') {
        if (pos_ >= s_.size()) break;
        const char e = s_[pos_++];
        switch (e) {
          case '"':
          case '\\':
          case '/':
            c = e;
            break;
          case 'b':
            c = '\b';
            break;
          case 'f':
            c = '\f';
            break;
          case 'n':
            c = '\n';
            break;
          case 'r':
            c = '\r';
            break;
          case 't':
            c = '\t';
            break;
          case 'u':  // field names here are ASCII: keep the escape as text
            if (pos_ + 4 > s_.size()) return Error("short \\u escape");
            out->append("\\u").append(s_.substr(pos_, 4));
            pos_ += 4;
            continue;
          default:
            --pos_;
            return Error(std::string("bad escape '\\") + e + "'");
        }
      }
      out->push_back(c);
    }
    if (pos_ >= s_.size()) return Error("unterminated string");
    ++pos_;
    return Status::OK();
  }

  // A JSON number, as a double and (when it is a non-negative integer below 2^64) exactly.
  Status Number(double* d, uint64_t* u, bool* is_uint) {
    SkipSpace();
    const size_t start = pos_;
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    const size_t digits = pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    if (pos_ == digits) {
      pos_ = start;
      return Error("expected a number" + Found());
    }
    bool integer = true;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integer = false;
      ++pos_;
      const size_t frac = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == frac) return Error("expected digits after '.'");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integer = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      const size_t exp = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      if (pos_ == exp) return Error("expected digits in the exponent");
    }
    const std::string text(s_.substr(start, pos_ - start));
    *d = std::strtod(text.c_str(), nullptr);
    *is_uint = false;
    *u = 0;
    if (integer && text[0] != '-') {
      uint64_t v = 0;
      bool overflow = false;
      for (char c : text) {
        const uint64_t digit = static_cast<uint64_t>(c - '0');
        if (v > (UINT64_MAX - digit) / 10) overflow = true;
        v = v * 10 + digit;
      }
      if (!overflow) {
        *u = v;
        *is_uint = true;
      }
    }
    return Status::OK();
  }

  Status Uint(const char* field, uint64_t* out) {
    const size_t at = (SkipSpace(), pos_);
    double d;
    bool is_uint;
    KVTIER_RETURN_IF_ERROR(Number(&d, out, &is_uint));
    if (!is_uint) {
      pos_ = at;
      return Error(std::string("\"") + field + "\" must be a non-negative integer");
    }
    return Status::OK();
  }

  Status Literal(std::string_view word) {
    SkipSpace();
    if (s_.substr(pos_, word.size()) != word) return Error("expected a JSON value" + Found());
    pos_ += word.size();
    return Status::OK();
  }

  // Skips any JSON value (for unknown fields).
  Status SkipValue(int depth = 0) {
    if (depth > 64) return Error("nesting deeper than 64");
    const char c = Peek();
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++pos_;
      if (Peek() == close) {
        ++pos_;
        return Status::OK();
      }
      for (;;) {
        if (c == '{') {
          std::string key;
          KVTIER_RETURN_IF_ERROR(String(&key));
          KVTIER_RETURN_IF_ERROR(Expect(':'));
        }
        KVTIER_RETURN_IF_ERROR(SkipValue(depth + 1));
        if (Peek() == ',') {
          ++pos_;
          continue;
        }
        return Expect(close);
      }
    }
    if (c == 't') return Literal("true");
    if (c == 'f') return Literal("false");
    if (c == 'n') return Literal("null");
    double d;
    uint64_t u;
    bool is_uint;
    return Number(&d, &u, &is_uint);
  }

 private:
  std::string_view s_;
  const std::string& where_;
  size_t pos_ = 0;
};

Status ParseLine(std::string_view line, const std::string& where, TraceRequest* r) {
  LineReader in(line, where);
  KVTIER_RETURN_IF_ERROR(in.Expect('{'));
  bool have_input = false, have_ids = false;
  if (in.Peek() == '}') return in.Error("empty object: \"input_length\" and \"hash_ids\" are required");
  std::string key;
  for (;;) {
    KVTIER_RETURN_IF_ERROR(in.String(&key));
    KVTIER_RETURN_IF_ERROR(in.Expect(':'));
    if (key == "timestamp") {
      double d;
      uint64_t u;
      bool is_uint;
      KVTIER_RETURN_IF_ERROR(in.Number(&d, &u, &is_uint));
      r->timestamp_ms = d;
    } else if (key == "input_length") {
      KVTIER_RETURN_IF_ERROR(in.Uint("input_length", &r->input_length));
      have_input = true;
    } else if (key == "output_length") {
      KVTIER_RETURN_IF_ERROR(in.Uint("output_length", &r->output_length));
    } else if (key == "round") {
      uint64_t v;
      KVTIER_RETURN_IF_ERROR(in.Uint("round", &v));
      if (v > static_cast<uint64_t>(INT64_MAX)) return in.Error("\"round\" is too large");
      r->round = static_cast<int64_t>(v);
    } else if (key == "hash_ids") {
      KVTIER_RETURN_IF_ERROR(in.Expect('['));
      r->hash_ids.clear();
      if (in.Peek() == ']') {
        (void)in.Expect(']');
      } else {
        for (;;) {
          uint64_t id;
          KVTIER_RETURN_IF_ERROR(in.Uint("hash_ids", &id));
          r->hash_ids.push_back(id);
          if (in.Peek() == ',') {
            (void)in.Expect(',');
            continue;
          }
          KVTIER_RETURN_IF_ERROR(in.Expect(']'));
          break;
        }
      }
      have_ids = true;
    } else {
      KVTIER_RETURN_IF_ERROR(in.SkipValue());
    }
    if (in.Peek() == ',') {
      (void)in.Expect(',');
      continue;
    }
    KVTIER_RETURN_IF_ERROR(in.Expect('}'));
    break;
  }
  if (!in.AtEnd()) return in.Error("text after the object");
  if (!have_input) return Status::InvalidArgument(where + ": \"input_length\" is missing");
  if (!have_ids) return Status::InvalidArgument(where + ": \"hash_ids\" is missing");
  if (r->input_length == 0) return Status::InvalidArgument(where + ": \"input_length\" is 0");
  if (r->hash_ids.empty()) return Status::InvalidArgument(where + ": \"hash_ids\" is empty");
  return Status::OK();
}

}  // namespace

Result<Trace> ParseTrace(std::string_view text, const std::string& name) {
  Trace t;
  t.name = name;
  std::unordered_set<uint64_t> ids;
  bool all_rounds = true;
  uint64_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    TraceRequest r;
    r.line = line_no;
    KVTIER_RETURN_IF_ERROR(ParseLine(line, name + ":" + std::to_string(line_no), &r));
    if (r.round < 0) all_rounds = false;
    t.total_blocks += r.hash_ids.size();
    t.total_tokens += r.input_length;
    t.max_blocks = std::max<uint64_t>(t.max_blocks, r.hash_ids.size());
    ids.insert(r.hash_ids.begin(), r.hash_ids.end());
    t.requests.push_back(std::move(r));
  }
  if (t.requests.empty()) return Status::InvalidArgument(name + ": no requests (an empty trace)");
  t.has_rounds = all_rounds;
  t.unique_blocks = ids.size();
  return t;
}

Result<Trace> LoadTrace(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::IOError("cannot open trace " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return Status::IOError("cannot read trace " + path);
  return ParseTrace(ss.str(), path);
}

Result<uint32_t> InferBlockTokens(const Trace& trace) {
  uint64_t lo = 1, hi = UINT32_MAX;
  for (const TraceRequest& r : trace.requests) {
    const uint64_t n = r.hash_ids.size();
    lo = std::max(lo, (r.input_length + n - 1) / n);
    if (n > 1) hi = std::min(hi, (r.input_length - 1) / (n - 1));
    if (lo > hi)
      return Status::InvalidArgument(trace.name + ":" + std::to_string(r.line) +
                                     ": no block size fits every request so far (len(hash_ids) == "
                                     "ceil(input_length / B)); name it with --block-tokens");
  }
  uint64_t pow2 = 0;
  for (uint64_t p = 1; p <= hi; p <<= 1)
    if (p >= lo) pow2 = p;
  return static_cast<uint32_t>(pow2 ? pow2 : lo);
}

Status CheckBlockTokens(const Trace& trace, uint32_t block_tokens) {
  if (block_tokens == 0) return Status::InvalidArgument("block size 0");
  for (const TraceRequest& r : trace.requests) {
    const uint64_t want = (r.input_length + block_tokens - 1) / block_tokens;
    if (r.hash_ids.size() != want)
      return Status::InvalidArgument(
          trace.name + ":" + std::to_string(r.line) + ": " + std::to_string(r.hash_ids.size()) +
          " hash_ids for input_length " + std::to_string(r.input_length) + ", but block size " +
          std::to_string(block_tokens) + " needs " + std::to_string(want) + "; check --block-tokens");
  }
  return Status::OK();
}

}  // namespace kvtier::bench
