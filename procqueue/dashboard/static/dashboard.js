// procqueue dashboard: live refresh of [data-refresh] panels and confirmations
// for [data-confirm] forms. Plain JS, served locally (no CDN, no framework).
(function () {
  "use strict";

  function refresh(panel) {
    var url = panel.getAttribute("data-refresh");
    var seconds = parseFloat(panel.getAttribute("data-interval") || "5");
    function tick() {
      if (document.hidden) { return schedule(); }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) { if (html !== null) { panel.innerHTML = html; } })
        .catch(function () { /* offline for a moment: try again next tick */ })
        .finally(schedule);
    }
    function schedule() { window.setTimeout(tick, seconds * 1000); }
    schedule();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  });
})();
