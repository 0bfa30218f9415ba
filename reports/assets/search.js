// Search as you type over window.SUPERWEIGHTS_INDEX (written by reports/search.py as search-index.js:
// fetch() of a local file is blocked under file://). Results are built with textContent only:
// catalog strings are untrusted and must never be parsed as HTML. A query is split into terms
// (`terms`), ranked per entry (`score`): exact field matches first.
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

  // field names a query may use as `name:value`, and the index field each one means
  var FIELDS = { layer: "layer", row: "row", col: "col", expert: "expert", org: "org", organization: "org",
                 family: "family", model: "model", arch: "arch", architecture: "arch", type: "type",
                 verdict: "verdict", param: "param", format: "format", quant: "quant" };
  var KIND_ORDER = { family: 0, model: 1, coordinate: 2, weight: 3 };

  // The query's terms: {field, value} for coordinates ("1:2533:7890", "[507, 1229]", "507,1229"),
  // "L11" and "layer:11"; {field: null, value} for any other word.
  function terms(query) {
    var found = [];
    function add(field, value) { found.push({ field: field, value: value }); }
    var rest = query.toLowerCase()
      .replace(/\b(\d+):(\d+):(\d+)\b/g, function (_, l, r, c) { add("layer", l); add("row", r); add("col", c); return " "; })
      .replace(/\[?\s*(\d+)\s*,\s*(\d+)\s*\]?/g, function (_, r, c) { add("row", r); add("col", c); return " "; });
    rest.split(/\s+/).forEach(function (word) {
      var named = /^([a-z]+):(.+)$/.exec(word);
      var layer = /^l(\d+)$/.exec(word);
      if (named && FIELDS[named[1]]) add(FIELDS[named[1]], normalise(named[2]));
      else if (layer) add("layer", layer[1]);
      else if (normalise(word)) add(null, normalise(word));
    });
    return found;
  }

  // How well an entry matches one term (0: not at all): an exact field value 3, a field value that
  // starts with the word 2, the word anywhere in its text 1. A named field must hold the value, or
  // (for names, not numbers) contain it.
  function score(entry, term) {
    var fields = entry.fields;
    if (term.field) {
      var value = fields[term.field];
      if (value === undefined) return 0;
      if (value === term.value) return 3;
      return !/^\d+$/.test(term.value) && value.indexOf(term.value) !== -1 ? 1 : 0;
    }
    var best = entry.text.indexOf(term.value) !== -1 ? 1 : 0;
    for (var name in fields) {
      if (fields[name] === term.value) return 3;
      if (fields[name].indexOf(term.value) === 0) best = 2;
    }
    return best;
  }

  // Entries matching every term, best first (exact field matches before substrings), then by kind.
  function matches(query) {
    var wanted = terms(query);
    if (!wanted.length) return [];
    var ranked = [];
    index.forEach(function (entry, position) {
      var total = 0;
      for (var i = 0; i < wanted.length; i++) {
        var s = score(entry, wanted[i]);
        if (!s) return;
        total += s;
      }
      ranked.push({ entry: entry, score: total, position: position });
    });
    ranked.sort(function (a, b) {
      return b.score - a.score || KIND_ORDER[a.entry.kind] - KIND_ORDER[b.entry.kind] || a.position - b.position;
    });
    return ranked.slice(0, MAX_RESULTS).map(function (r) { return r.entry; });
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
