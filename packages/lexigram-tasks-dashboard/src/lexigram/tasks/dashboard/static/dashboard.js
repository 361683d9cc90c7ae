// Progressive enhancement: the pages work without this file.
// With it, the overview's counts and charts refresh in place.
(function () {
  "use strict";
  function startLiveRefresh(box) {
    var url = box.getAttribute("data-live-url");
    var seconds = parseFloat(box.getAttribute("data-refresh")) || 5;
    var busy = false;
    function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) {
          if (html !== null) {
            box.innerHTML = html;  // server-rendered, autoescaped HTML of this app
            box.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () { /* keep the last numbers; try again next time */ })
        .then(function () { busy = false; });
    }
    window.setInterval(refresh, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("live");
    if (box) startLiveRefresh(box);
  });
})();
