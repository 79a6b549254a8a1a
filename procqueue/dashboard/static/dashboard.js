// procqueue dashboard: live refresh of [data-refresh] panels and confirmations
// for [data-confirm] forms. Plain JS, served locally (no CDN, no framework).
(function () {
  "use strict";

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

  document.addEventListener("DOMContentLoaded", function () {
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
