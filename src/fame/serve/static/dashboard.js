// fame dashboard: refresh the content in place, and filter by a clicked domain.
// No library: the page is rendered by the server and works without this script.
(function () {
  "use strict";
  var REFRESH_MS = 10000;
  var form = document.getElementById("filter");
  var box = document.getElementById("autorefresh");

  function refresh() {
    if (!box || !box.checked || document.hidden) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["content", "status"].forEach(function (id) {
          var fresh = doc.getElementById(id);
          var old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(fresh); }
        });
      })
      .catch(function () { /* keep the page as it is; the next tick retries */ });
  }

  // A click on a bar of the chart filters the page by its domain.
  document.addEventListener("click", function (event) {
    var bar = event.target.closest ? event.target.closest("rect.bar") : null;
    if (!bar || !form) { return; }
    var domain = bar.getAttribute("data-domain");
    var select = document.getElementById("domain");
    if (domain && domain !== "other" && select) {
      if (!Array.prototype.some.call(select.options, function (o) { return o.value === domain; })) {
        select.add(new Option(domain, domain));
      }
      select.value = domain;
      form.submit();
    }
  });
  // Changing a select applies the filter at once.
  ["domain", "range"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el && form) { el.addEventListener("change", function () { form.submit(); }); }
  });
  window.setInterval(refresh, REFRESH_MS);
}());
