/* qkov report: hover details for attention views. No network, no eval, no innerHTML:
   every token reaches the page through textContent. Safe to run more than once
   (Jupyter runs it once per output); each run wires only the elements not yet wired. */
(function () {
  "use strict";
  var cache = {};
  var tip = null;

  function data(id) {
    if (!(id in cache)) {
      var el = document.getElementById(id);
      cache[id] = el ? JSON.parse(el.textContent) : null;
    }
    return cache[id];
  }

  function tipEl() {
    if (!tip) {
      tip = document.querySelector(".qkov-tip");
      if (!tip) {
        tip = document.createElement("div");
        tip.className = "qkov-tip";
        document.body.appendChild(tip);
      }
    }
    return tip;
  }

  function show(ev, text) {
    var t = tipEl();
    t.textContent = text;
    t.classList.add("on");
    // Keep the tip inside the window: flip it to the left of the pointer near the edge.
    var left = ev.pageX + 14;
    if (ev.clientX + 14 + t.offsetWidth > document.documentElement.clientWidth) {
      left = Math.max(window.scrollX, ev.pageX - 14 - t.offsetWidth);
    }
    t.style.left = left + "px";
    t.style.top = (ev.pageY + 14) + "px";
  }

  function hide() {
    if (tip) { tip.classList.remove("on"); }
  }

  function q(s) { return "\u201c" + s + "\u201d"; }

  // The pointer's position in the SVG's own coordinates (null before it is laid out).
  function svgPoint(svg, ev) {
    var m = svg.getScreenCTM();
    if (!m) { return null; }
    var pt = svg.createSVGPoint();
    pt.x = ev.clientX; pt.y = ev.clientY;
    return pt.matrixTransform(m.inverse());
  }

  function wireHeatmap(g) {
    var d = data(g.getAttribute("data-src"));
    if (!d) { return; }
    var key = g.getAttribute("data-attn");
    var cell = +g.getAttribute("data-cell");
    var margin = +g.getAttribute("data-margin");
    var svg = g.ownerSVGElement;
    svg.addEventListener("mousemove", function (ev) {
      var p = svgPoint(svg, ev);
      if (!p) { return; }
      var i = Math.floor((p.y - margin) / cell), j = Math.floor((p.x - margin) / cell);
      var pat = d.patterns[key], n = d.tokens.length;
      if (i < 0 || j < 0 || i >= n || j >= n || j > i || !pat) { hide(); return; }
      show(ev, "L" + key.replace(".", "H") + "  destination #" + i + " " + q(d.tokens[i]) +
        "  \u2190  source #" + j + " " + q(d.tokens[j]) + ":  " + pat[i][j].toFixed(3));
    });
    svg.addEventListener("mouseleave", hide);
  }

  // A raster heatmap (one image, a pixel a cell): the cell under the pointer is found from
  // its position; labels and values come from the JSON block (d.rows, d.cols, d[key]).
  function wireGrid(g) {
    var d = data(g.getAttribute("data-src"));
    if (!d) { return; }
    var key = g.getAttribute("data-grid");
    var cell = +g.getAttribute("data-cell");
    var x0 = +g.getAttribute("data-x0"), y0 = +g.getAttribute("data-y0");
    var svg = g.ownerSVGElement;
    svg.addEventListener("mousemove", function (ev) {
      var p = svgPoint(svg, ev);
      if (!p) { return; }
      var i = Math.floor((p.y - y0) / cell), j = Math.floor((p.x - x0) / cell);
      var vals = d[key];
      if (!vals || i < 0 || j < 0 || i >= d.rows.length || j >= d.cols.length) { hide(); return; }
      var v = vals[i][j];
      show(ev, key.toUpperCase() + "  " + d.rows[i] + " \u2190 " + d.cols[j] + ":  " +
        (v === null ? "not defined" : v.toFixed(3)));
    });
    svg.addEventListener("mouseleave", hide);
  }

  function wireStrip(strip) {
    var d = data(strip.getAttribute("data-src"));
    var select = strip.querySelector("select");
    var spans = strip.querySelectorAll(".tok");
    if (!d || !select) { return; }
    function paint(i) {
      var pat = d.patterns[select.value];
      for (var j = 0; j < spans.length; j++) {
        var w = (pat && j <= i) ? pat[i][j] : 0;
        spans[j].style.backgroundColor = w > 0.005 ? "rgba(8,81,156," + Math.min(w * 0.9 + 0.05, 1) + ")" : "";
        spans[j].style.color = w > 0.5 ? "#fff" : "";
        spans[j].classList.toggle("dest", j === i);
      }
    }
    Array.prototype.forEach.call(spans, function (s, i) {
      s.addEventListener("mouseenter", function (ev) {
        paint(i);
        var pat = d.patterns[select.value], best = 0;
        for (var j = 0; j <= i; j++) { if (pat[i][j] > pat[i][best]) { best = j; } }
        show(ev, "destination #" + i + " " + q(d.tokens[i]) + " attends most to source #" +
          best + " " + q(d.tokens[best]) + " (" + pat[i][best].toFixed(3) + ")");
      });
      s.addEventListener("mouseleave", hide);
    });
    select.addEventListener("change", function () { paint(-1); });
  }

  // Attribution view: tokens coloured by one path's push on the next token's logit (blue
  // up, red down); hovering a token lists the paths pushing its next token up and down.
  function wireAttrib(view) {
    var d = data(view.getAttribute("data-src"));
    var select = view.querySelector("select");
    var spans = view.querySelectorAll(".tok[data-i]");
    if (!d || !select) { return; }
    function paint() {
      var p = +select.value, top = 0, i;
      for (i = 0; i < d.contributions.length; i++) { top = Math.max(top, Math.abs(d.contributions[i][p])); }
      for (i = 0; i < spans.length; i++) {
        var v = d.contributions[+spans[i].getAttribute("data-i")][p], a = top ? Math.abs(v) / top : 0;
        spans[i].style.backgroundColor = a > 0.02 ? (v > 0 ? "rgba(8,81,156," : "rgba(214,39,40,") + (a * 0.85).toFixed(3) + ")" : "";
        spans[i].style.color = a > 0.55 ? "#fff" : "";
      }
    }
    function fmt(list) {
      return list.map(function (e) { return d.paths[e[0]] + " " + (e[1] > 0 ? "+" : "") + e[1].toFixed(2); }).join(", ") || "none";
    }
    Array.prototype.forEach.call(spans, function (s) {
      s.addEventListener("mouseenter", function (ev) {
        var i = +s.getAttribute("data-i"), row = d.contributions[i];
        var order = row.map(function (v, p) { return [p, v]; }).sort(function (a, b) { return b[1] - a[1]; });
        var up = order.filter(function (e) { return e[1] > 0; }).slice(0, 3);
        var down = order.filter(function (e) { return e[1] < 0; }).reverse().slice(0, 3);
        show(ev, "#" + i + " " + q(d.tokens[i]) + " \u2192 next " + q(d.tokens[i + 1]) +
          " (predicted " + q(d.predicted[i]) + "), logit " + d.logit[i].toFixed(2) + ";  " +
          d.paths[+select.value] + ": " + row[+select.value].toFixed(2) +
          ";  up: " + fmt(up) + ";  down: " + fmt(down));
      });
      s.addEventListener("mouseleave", hide);
    });
    select.addEventListener("change", paint);
    paint();
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("g[data-attn]:not([data-wired])"), function (g) {
      g.setAttribute("data-wired", "1");
      wireHeatmap(g);
    });
    Array.prototype.forEach.call(document.querySelectorAll("g[data-grid]:not([data-wired])"), function (g) {
      g.setAttribute("data-wired", "1");
      wireGrid(g);
    });
    Array.prototype.forEach.call(document.querySelectorAll(".qkov-attrib:not([data-wired])"), function (v) {
      v.setAttribute("data-wired", "1");
      wireAttrib(v);
    });
    Array.prototype.forEach.call(document.querySelectorAll(".qkov-strip:not([data-wired])"), function (s) {
      s.setAttribute("data-wired", "1");
      wireStrip(s);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
