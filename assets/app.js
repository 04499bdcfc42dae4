// Copy buttons and local-time display for the key page, and buttons that a
// double-click cannot press. Served from our own origin so that the
// Content-Security-Policy can forbid inline script.
"use strict";
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  button.addEventListener("click", function () {
    var source = document.getElementById(button.dataset.copy);
    var text = source.value !== undefined ? source.value : source.textContent;
    var done = function () {
      button.textContent = "Copied";
      button.classList.add("copied");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else if (source.select) {
      source.select();
      document.execCommand("copy");
      done();
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
      done();
    }
  });
});
var expires = document.getElementById("expires");
var local = document.getElementById("expires-local");
if (expires && local) {
  var when = new Date(Number(expires.dataset.unix) * 1000);
  local.textContent = "your time: " + when.toLocaleString();
}
// Against double-clickjacking: a page opened under the pointer between the
// two clicks of a double-click must not take the second one. A button
// marked data-arm works only once the pointer has moved or a key has been
// pressed on this page.
document.querySelectorAll("[data-arm]").forEach(function (button) {
  var armed = false;
  var arm = function () {
    armed = true;
  };
  ["pointermove", "keydown", "touchstart"].forEach(function (event) {
    document.addEventListener(event, arm, { once: true, passive: true });
  });
  button.addEventListener("click", function (event) {
    if (!armed) {
      event.preventDefault();
    }
  });
});
