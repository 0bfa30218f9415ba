// Search as you type over window.SUPERWEIGHTS_INDEX (written by reports/search.py as search-index.js:
// fetch() of a local file is blocked under file://). Results are built with textContent only:
// catalog strings are untrusted and must never be parsed as HTML.
(function () {
  "use strict";
  var MAX_RESULTS = 20;
  var input = document.getElementById("search");
  var list = document.getElementById("search-results");
  var index = window.SUPERWEIGHTS_INDEX || [];
  var root = input.getAttribute("data-root") || "";
  var active = -1;

  // Same rules as reports.search.normalise: "[507, 1229]" matches "507,1229".
  function normalise(text) {
    return text.toLowerCase().replace(/[\[\]()]/g, " ").replace(/\s*,\s*/g, ",").replace(/\s+/g, " ").trim();
  }

  function matches(query) {
    var terms = normalise(query).split(" ").filter(Boolean);
    if (!terms.length) return [];
    return index.filter(function (entry) {
      return terms.every(function (term) { return entry.text.indexOf(term) !== -1; });
    }).slice(0, MAX_RESULTS);
  }

  function item(entry) {
    var li = document.createElement("li");
    var a = document.createElement("a");
    a.href = root + entry.url;
    a.className = "result-" + entry.kind;
    var title = document.createElement("span");
    title.className = "title";
    title.textContent = entry.title;
    var detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = entry.detail;
    a.appendChild(title);
    a.appendChild(detail);
    li.appendChild(a);
    return li;
  }

  function render() {
    var query = input.value;
    list.replaceChildren();
    active = -1;
    if (!query.trim()) { list.hidden = true; return; }
    var found = matches(query);
    if (!found.length) {
      var none = document.createElement("li");
      none.className = "empty";
      none.textContent = "No model or super weight matches “" + query + "”.";
      list.appendChild(none);
    }
    found.forEach(function (entry) { list.appendChild(item(entry)); });
    list.hidden = false;
  }

  function move(step) {
    var links = list.querySelectorAll("a");
    if (!links.length) return;
    if (active >= 0) links[active].classList.remove("active");
    active = (active + step + links.length) % links.length;
    links[active].classList.add("active");
    links[active].scrollIntoView({ block: "nearest" });
  }

  input.addEventListener("input", render);
  input.addEventListener("keydown", function (event) {
    if (event.key === "ArrowDown") { move(1); event.preventDefault(); }
    else if (event.key === "ArrowUp") { move(-1); event.preventDefault(); }
    else if (event.key === "Escape") { input.value = ""; render(); }
    else if (event.key === "Enter") {
      var links = list.querySelectorAll("a");
      if (links.length) window.location.href = links[Math.max(active, 0)].href;
    }
  });
  document.addEventListener("click", function (event) {
    if (!event.target.closest || !event.target.closest(".search")) list.hidden = true;
  });
  input.addEventListener("focus", function () { if (input.value.trim()) render(); });
})();
