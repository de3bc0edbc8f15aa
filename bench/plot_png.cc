#include "bench/plot_png.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

namespace kvtier::bench {
namespace {

// ---- 5x7 bitmap font: one row per string, '#' is ink ------------------------------------
struct Glyph {
  char c;
  const char* rows[7];
};

const Glyph kGlyphs[] = {
    {'A', {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'B', {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."}},
    {'C', {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."}},
    {'D', {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."}},
    {'E', {"#####", "#....", "#....", "####.", "#....", "#....", "#####"}},
    {'F', {"#####", "#....", "#....", "####.", "#....", "#....", "#...."}},
    {'G', {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"}},
    {'H', {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'I', {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'J', {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."}},
    {'K', {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"}},
    {'L', {"#....", "#....", "#....", "#....", "#....", "#....", "#####"}},
    {'M', {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"}},
    {'N', {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"}},
    {'O', {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'P', {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."}},
    {'Q', {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"}},
    {'R', {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"}},
    {'S', {".####", "#....", "#....", ".###.", "....#", "....#", "####."}},
    {'T', {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
    {'U', {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'V', {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'W', {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."}},
    {'X', {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"}},
    {'Y', {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."}},
    {'Z', {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"}},
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}},
    {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
    {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
    {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
    {'%', {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"}},
    {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
    {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
    {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
    {'<', {"...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."}},
    {'>', {".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."}},
    {'*', {".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."}},
    {'\'', {"..#..", "..#..", ".#...", ".....", ".....", ".....", "....."}},
};

const Glyph* FindGlyph(char c) {
  const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const Glyph& g : kGlyphs)
    if (g.c == u) return &g;
  return nullptr;
}

// ---- canvas -----------------------------------------------------------------------------
class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<size_t>(w) * h * 3, 0xff) {}
  int width() const { return w_; }
  int height() const { return h_; }

  void Pixel(int x, int y, uint32_t rgb) {
    if (x < clip_x0_ || y < clip_y0_ || x >= clip_x1_ || y >= clip_y1_) return;
    uint8_t* p = &px_[(static_cast<size_t>(y) * w_ + x) * 3];
    p[0] = static_cast<uint8_t>(rgb >> 16);
    p[1] = static_cast<uint8_t>(rgb >> 8);
    p[2] = static_cast<uint8_t>(rgb);
  }
  void FillRect(int x0, int y0, int x1, int y1, uint32_t rgb) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) Pixel(x, y, rgb);
  }
  void Disc(double cx, double cy, double r, uint32_t rgb) {
    for (int y = static_cast<int>(std::floor(cy - r)); y <= static_cast<int>(std::ceil(cy + r)); ++y)
      for (int x = static_cast<int>(std::floor(cx - r)); x <= static_cast<int>(std::ceil(cx + r)); ++x)
        if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r) Pixel(x, y, rgb);
  }
  // A line `width` pixels wide; dashed: `on` pixels drawn, `off` skipped (off = 0: solid),
  // the pattern continuing across calls through `phase`.
  void Line(double x0, double y0, double x1, double y1, uint32_t rgb, double width, double on = 1, double off = 0,
            double* phase = nullptr) {
    const double len = std::hypot(x1 - x0, y1 - y0);
    const int steps = std::max(1, static_cast<int>(std::ceil(len * 2)));
    double local = phase ? *phase : 0;
    for (int i = 0; i <= steps; ++i) {
      const double t = static_cast<double>(i) / steps;
      const double d = local + t * len;
      if (off > 0 && std::fmod(d, on + off) >= on) continue;
      const double x = x0 + (x1 - x0) * t, y = y0 + (y1 - y0) * t;
      if (width <= 1.0) {
        Pixel(static_cast<int>(std::lround(x)), static_cast<int>(std::lround(y)), rgb);
      } else {
        Disc(x, y, width / 2, rgb);
      }
    }
    if (phase) *phase = local + len;
  }
  void Text(int x, int y, const std::string& s, uint32_t rgb, int scale) {
    for (char c : s) {
      if (const Glyph* g = FindGlyph(c)) {
        for (int r = 0; r < 7; ++r)
          for (int col = 0; col < 5; ++col)
            if (g->rows[r][col] == '#') FillRect(x + col * scale, y + r * scale, x + (col + 1) * scale,
                                                 y + (r + 1) * scale, rgb);
      }
      x += 6 * scale;
    }
  }
  static int TextWidth(const std::string& s, int scale) {
    return s.empty() ? 0 : static_cast<int>(s.size()) * 6 * scale - scale;
  }
  void Clip(int x0, int y0, int x1, int y1) {
    clip_x0_ = std::max(0, x0), clip_y0_ = std::max(0, y0);
    clip_x1_ = std::min(w_, x1), clip_y1_ = std::min(h_, y1);
  }
  void NoClip() { Clip(0, 0, w_, h_); }

  Status WritePng(const std::string& path) const;

 private:
  int w_, h_;
  int clip_x0_ = 0, clip_y0_ = 0, clip_x1_ = 1 << 30, clip_y1_ = 1 << 30;
  std::vector<uint8_t> px_;
};

void Put32(std::vector<uint8_t>* out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<uint8_t>(v >> s));
}

void Chunk(std::vector<uint8_t>* out, const char type[4], const std::vector<uint8_t>& data) {
  Put32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out->size();
  out->insert(out->end(), type, type + 4);
  out->insert(out->end(), data.begin(), data.end());
  const uLong crc = crc32(0L, out->data() + start, static_cast<uInt>(out->size() - start));
  Put32(out, static_cast<uint32_t>(crc));
}

Status Canvas::WritePng(const std::string& path) const {
  // Rows with filter byte 0 (none), RGB 8 bits per channel.
  std::vector<uint8_t> raw;
  raw.reserve(static_cast<size_t>(h_) * (w_ * 3 + 1));
  for (int y = 0; y < h_; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), px_.begin() + static_cast<ptrdiff_t>(y) * w_ * 3,
               px_.begin() + static_cast<ptrdiff_t>(y + 1) * w_ * 3);
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> z(zlen);
  if (compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size()), 9) != Z_OK)
    return Status::Internal("plot: zlib compress2 failed");
  z.resize(zlen);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> ihdr;
  Put32(&ihdr, static_cast<uint32_t>(w_));
  Put32(&ihdr, static_cast<uint32_t>(h_));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, truecolour, deflate, no filter, no interlace
  Chunk(&png, "IHDR", ihdr);
  Chunk(&png, "IDAT", z);
  Chunk(&png, "IEND", {});
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) return Status::IOError("plot: cannot write " + path + ": " + std::strerror(errno));
  if (std::fwrite(png.data(), 1, png.size(), f.get()) != png.size())
    return Status::IOError("plot: short write to " + path);
  return Status::OK();
}

std::string TokensLabel(double t) {
  char buf[32];
  if (t >= 1048576) std::snprintf(buf, sizeof buf, "%gM", t / 1048576);
  else if (t >= 1024) std::snprintf(buf, sizeof buf, "%gK", t / 1024);
  else std::snprintf(buf, sizeof buf, "%g", t);
  return buf;
}

std::string SecondsLabel(double s) {
  char buf[32];
  if (s < 1e-3) std::snprintf(buf, sizeof buf, "%gUS", std::round(s * 1e6));
  else if (s < 1) std::snprintf(buf, sizeof buf, "%gMS", std::round(s * 1e3));
  else std::snprintf(buf, sizeof buf, "%gS", s);
  return buf;
}

constexpr uint32_t kInk = 0x202020, kGrid = 0xdddddd, kAxis = 0x606060;

double StrokeWidth(const PlotSeries& s) { return s.stroke == PlotSeries::Stroke::kDotted ? 4 : 3; }
double StrokeOn(const PlotSeries& s) { return s.stroke == PlotSeries::Stroke::kDotted ? 2 : 12; }
double StrokeOff(const PlotSeries& s) {
  return s.stroke == PlotSeries::Stroke::kSolid ? 0 : s.stroke == PlotSeries::Stroke::kDotted ? 9 : 6;
}

}  // namespace

Status WriteLogLogPng(const std::string& path, const PlotSpec& spec) {
  if (spec.panels.empty()) return Status::InvalidArgument("plot: nothing to draw");
  // Shared ranges, so panels compare at a glance.
  double xmin = 1e300, xmax = 0, ymin = 1e300, ymax = 0;
  for (const PlotPanel& p : spec.panels)
    for (const PlotSeries& s : p.series)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!(s.x[i] > 0) || !(s.y[i] > 0)) continue;
        xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
        ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
      }
  if (xmax <= 0 || ymax <= 0) return Status::InvalidArgument("plot: no positive points");
  const double lx0 = std::floor(std::log2(xmin)), lx1 = std::max(lx0 + 1, std::ceil(std::log2(xmax)));
  const double ly0 = std::floor(std::log10(ymin)), ly1 = std::max(ly0 + 1, std::ceil(std::log10(ymax)));

  const int cols = static_cast<int>(std::max<uint32_t>(1, spec.columns));
  const int cells = static_cast<int>(spec.panels.size()) + 1;  // + the legend
  const int rows = (cells + cols - 1) / cols;
  const int cell_w = 560, cell_h = 420, top = 60, margin = 20;
  Canvas c(margin * 2 + cols * cell_w, top + rows * cell_h + margin);
  c.Text(margin, 18, spec.title, kInk, 3);

  const int pad_l = 96, pad_r = 24, pad_t = 56, pad_b = 70;
  for (size_t pi = 0; pi < spec.panels.size(); ++pi) {
    const PlotPanel& p = spec.panels[pi];
    const int cx = margin + static_cast<int>(pi % cols) * cell_w, cy = top + static_cast<int>(pi / cols) * cell_h;
    const int ax0 = cx + pad_l, ax1 = cx + cell_w - pad_r, ay0 = cy + pad_t, ay1 = cy + cell_h - pad_b;
    auto X = [&](double v) { return ax0 + (std::log2(v) - lx0) / (lx1 - lx0) * (ax1 - ax0); };
    auto Y = [&](double v) { return ay1 - (std::log10(v) - ly0) / (ly1 - ly0) * (ay1 - ay0); };
    c.Text(ax0, cy + 10, p.title, kInk, 2);
    c.Text(ax0, cy + 34, spec.y_label, kAxis, 2);
    // Grid and ticks: every power of two in x (labels where they fit), every decade in y.
    const int x_every = (lx1 - lx0) > 9 ? 2 : 1;
    for (int e = static_cast<int>(lx0); e <= static_cast<int>(lx1); ++e) {
      const double x = X(std::ldexp(1.0, e));
      c.Line(x, ay0, x, ay1, kGrid, 1);
      if ((e - static_cast<int>(lx0)) % x_every == 0) {
        const std::string l = TokensLabel(std::ldexp(1.0, e));
        c.Text(static_cast<int>(x) - Canvas::TextWidth(l, 2) / 2, ay1 + 10, l, kInk, 2);
      }
    }
    for (int e = static_cast<int>(ly0); e <= static_cast<int>(ly1); ++e) {
      const double y = Y(std::pow(10.0, e));
      c.Line(ax0, y, ax1, y, kGrid, 1);
      const std::string l = SecondsLabel(std::pow(10.0, e));
      c.Text(ax0 - 10 - Canvas::TextWidth(l, 2), static_cast<int>(y) - 7, l, kInk, 2);
    }
    c.Line(ax0, ay0, ax0, ay1, kAxis, 2);
    c.Line(ax0, ay1, ax1, ay1, kAxis, 2);
    c.Text((ax0 + ax1) / 2 - Canvas::TextWidth(spec.x_label, 2) / 2, ay1 + 36, spec.x_label, kAxis, 2);
    c.Clip(ax0, ay0 - 6, ax1 + 6, ay1 + 1);
    for (const PlotSeries& s : p.series) {
      double phase = 0;
      bool have = false;
      double px = 0, py = 0;
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!(s.x[i] > 0) || !(s.y[i] > 0)) continue;
        const double x = X(s.x[i]), y = Y(s.y[i]);
        if (have) c.Line(px, py, x, y, s.rgb, StrokeWidth(s), StrokeOn(s), StrokeOff(s), &phase);
        px = x, py = y, have = true;
      }
      if (!s.markers) continue;
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!(s.x[i] > 0) || !(s.y[i] > 0)) continue;
        const bool filled = s.measured.empty() || (i < s.measured.size() && s.measured[i]);
        c.Disc(X(s.x[i]), Y(s.y[i]), 6, s.rgb);
        if (!filled) c.Disc(X(s.x[i]), Y(s.y[i]), 3.5, 0xffffff);
      }
    }
    c.NoClip();
  }

  // The legend: one entry per distinct label, in first-seen order.
  const size_t li = spec.panels.size();
  const int lx = margin + static_cast<int>(li % cols) * cell_w + 30;
  int ly = top + static_cast<int>(li / cols) * cell_h + pad_t;
  std::vector<const PlotSeries*> entries;
  for (const PlotPanel& p : spec.panels)
    for (const PlotSeries& s : p.series)
      if (std::none_of(entries.begin(), entries.end(), [&](const PlotSeries* e) { return e->label == s.label; }))
        entries.push_back(&s);
  c.Text(lx, ly - 30, "LEGEND", kInk, 2);
  for (const PlotSeries* s : entries) {
    double phase = 0;
    c.Line(lx, ly + 7, lx + 60, ly + 7, s->rgb, StrokeWidth(*s), StrokeOn(*s), StrokeOff(*s), &phase);
    if (s->markers) c.Disc(lx + 30, ly + 7, 6, s->rgb);
    c.Text(lx + 74, ly, s->label, kInk, 2);
    ly += 28;
  }
  ly += 8;
  c.Disc(lx + 30, ly + 7, 6, 0x606060);
  c.Text(lx + 74, ly, "MEASURED", kInk, 2);
  ly += 28;
  c.Disc(lx + 30, ly + 7, 6, 0x606060);
  c.Disc(lx + 30, ly + 7, 3.5, 0xffffff);
  c.Text(lx + 74, ly, "EXTRAPOLATED", kInk, 2);
  ly += 36;
  for (const std::string& n : spec.notes) {
    c.Text(lx, ly, n, kAxis, 2);
    ly += 24;
  }
  return c.WritePng(path);
}

}  // namespace kvtier::bench
