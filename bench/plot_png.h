// A small log-log line chart written as a PNG, for `kvtier bench recompute --plot`:
// a grid of panels sharing one legend, axes in powers of two (x) and decades (y),
// solid or dashed lines, filled markers for measured points and hollow ones for
// points that are not. Text uses a built-in 5x7 bitmap font (upper case, digits and
// a few signs; lower case is drawn as upper case). zlib compresses the image data.
//
// Plain functions; no state shared between calls.
#ifndef KVTIER_BENCH_PLOT_PNG_H_
#define KVTIER_BENCH_PLOT_PNG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::bench {

struct PlotSeries {
  std::string label;   // legend text; series with equal labels share one legend entry
  uint32_t rgb = 0;    // 0xRRGGBB
  enum class Stroke : uint8_t { kSolid, kDashed, kDotted };
  Stroke stroke = Stroke::kSolid;  // dotted draws over dashed where two series coincide
  bool markers = true;
  std::vector<double> x, y;
  std::vector<bool> measured;  // per point: filled marker if true, hollow if false (empty: all filled)
};

struct PlotPanel {
  std::string title;
  std::vector<PlotSeries> series;
};

struct PlotSpec {
  std::string title;
  std::string x_label;  // under every panel
  std::string y_label;
  std::vector<PlotPanel> panels;
  std::vector<std::string> notes;  // lines under the legend
  uint32_t columns = 3;
};

// x is a token count (ticks 1K, 2K, ...), y seconds (ticks 1MS, 10MS, ..., 1S, 10S).
// Non-positive values are skipped.
Status WriteLogLogPng(const std::string& path, const PlotSpec& spec);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_PLOT_PNG_H_
