// procqueue dashboard: the theme (light / dark), live refresh of [data-refresh]
// panels and confirmations for [data-confirm] forms. Plain JS, served locally (no
// CDN, no framework). Loaded in <head> without `defer`: the remembered theme is set
// on <html> before the first paint; everything else waits for DOMContentLoaded.
(function () {
  "use strict";

  // The theme follows the system (prefers-color-scheme, in CSS) until the header's
  // toggle picks one; the choice is kept in localStorage.
  var THEME_KEY = "procqueue-theme";
  var root = document.documentElement;
  function storedTheme() {
    try { return window.localStorage.getItem(THEME_KEY); } catch (e) { return null; }
  }
  function applyTheme(theme) {
    if (theme === "light" || theme === "dark") { root.setAttribute("data-theme", theme); }
  }
  applyTheme(storedTheme());

  function currentTheme() {
    var set = root.getAttribute("data-theme");
    if (set) { return set; }
    var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    return dark ? "dark" : "light";
  }
  function themeToggle(button) {
    function label() {
      var other = currentTheme() === "dark" ? "light" : "dark";
      button.textContent = other === "dark" ? "Dark theme" : "Light theme";
      button.setAttribute("aria-pressed", currentTheme() === "dark" ? "true" : "false");
    }
    button.addEventListener("click", function () {
      var theme = currentTheme() === "dark" ? "light" : "dark";
      applyTheme(theme);
      try { window.localStorage.setItem(THEME_KEY, theme); } catch (e) { /* private mode */ }
      label();
    });
    if (window.matchMedia) {  // the system switched while no choice is stored
      window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", label);
    }
    label();
    button.hidden = false;
  }

  // A panel waits while the user is busy in it: a field has the focus, or (with
  // data-pause-on-selection="name") boxes of that name are ticked; a refresh
  // would drop what they typed or ticked.
  function busy(panel) {
    var active = document.activeElement;
    if (active && active.closest && active.closest("form, input, select, textarea")) { return true; }
    var name = panel.getAttribute("data-pause-on-selection");
    return Boolean(name && document.querySelector("input[name='" + name + "']:checked"));
  }

  function refresh(panel) {
    var url = panel.getAttribute("data-refresh");
    var seconds = parseFloat(panel.getAttribute("data-interval") || "5");
    function tick() {
      if (document.hidden || busy(panel)) { return schedule(); }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) { if (html !== null && !busy(panel)) { panel.innerHTML = html; } })
        .catch(function () { /* offline for a moment: try again next tick */ })
        .finally(schedule);
    }
    function schedule() { window.setTimeout(tick, seconds * 1000); }
    schedule();
  }

  // An action on the ticked rows: say how many, or that none is ticked.
  function confirmSelection(form, event) {
    var name = form.getAttribute("data-confirm-selection");
    var ticked = document.querySelectorAll("input[name='" + name + "'][form='" + form.id + "']:checked").length;
    var verb = event.submitter ? event.submitter.value : "act on";
    if (ticked === 0) {
      window.alert("No job selected: tick the jobs first.");
      event.preventDefault();
    } else if (!window.confirm(verb.charAt(0).toUpperCase() + verb.slice(1) + " " + ticked + " selected job" + (ticked === 1 ? "" : "s") + "?")) {
      event.preventDefault();
    }
  }

  // Charts (server-rendered SVG): the <title> of the hovered or tapped bar, point
  // or column shows at once in a small box by the pointer.
  function chartTips() {
    var tip = document.createElement("div");
    tip.className = "chart-tip";
    tip.setAttribute("role", "tooltip");
    tip.hidden = true;
    document.body.appendChild(tip);
    function titleOf(node) {
      for (; node && node.nodeName.toLowerCase() !== "svg"; node = node.parentNode) {
        var title = node.querySelector ? node.querySelector(":scope > title") : null;
        if (title) { return title.textContent; }
      }
      return null;
    }
    function place(event) {
      var x = Math.min(event.clientX + 12, window.innerWidth - tip.offsetWidth - 4);
      var y = event.clientY + 16 + tip.offsetHeight > window.innerHeight
        ? event.clientY - tip.offsetHeight - 8 : event.clientY + 16;
      tip.style.left = Math.max(4, x) + "px";
      tip.style.top = Math.max(4, y) + "px";
    }
    function show(event) {
      var inChart = event.target.closest && event.target.closest("svg.chart");
      var text = inChart ? titleOf(event.target) : null;
      if (!text) { tip.hidden = true; return; }
      tip.textContent = text;
      tip.hidden = false;
      place(event);
    }
    document.addEventListener("pointerover", show);
    document.addEventListener("pointerdown", show);
    document.addEventListener("pointermove", function (event) { if (!tip.hidden) { place(event); } });
    document.addEventListener("scroll", function () { tip.hidden = true; }, true);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".theme-toggle").forEach(themeToggle);
    chartTips();
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("form[data-confirm-selection]").forEach(function (form) {
      form.addEventListener("submit", function (event) { confirmSelection(form, event); });
    });
    // Delegated: forms inside a refreshed panel are new after each refresh.
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (form.matches && form.matches("form[data-confirm]") && !window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });
})();
