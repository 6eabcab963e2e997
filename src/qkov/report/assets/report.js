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

  function wireHeatmap(g) {
    var d = data(g.getAttribute("data-src"));
    if (!d) { return; }
    var key = g.getAttribute("data-attn");
    var cell = +g.getAttribute("data-cell");
    var margin = +g.getAttribute("data-margin");
    var svg = g.ownerSVGElement;
    svg.addEventListener("mousemove", function (ev) {
      var m = svg.getScreenCTM();
      if (!m) { return; }
      var pt = svg.createSVGPoint();
      pt.x = ev.clientX; pt.y = ev.clientY;
      var p = pt.matrixTransform(m.inverse());
      var i = Math.floor((p.y - margin) / cell), j = Math.floor((p.x - margin) / cell);
      var pat = d.patterns[key], n = d.tokens.length;
      if (i < 0 || j < 0 || i >= n || j >= n || j > i || !pat) { hide(); return; }
      show(ev, "L" + key.replace(".", "H") + "  destination #" + i + " " + q(d.tokens[i]) +
        "  \u2190  source #" + j + " " + q(d.tokens[j]) + ":  " + pat[i][j].toFixed(3));
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

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("g[data-attn]:not([data-wired])"), function (g) {
      g.setAttribute("data-wired", "1");
      wireHeatmap(g);
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
