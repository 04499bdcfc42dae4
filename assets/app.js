// Copy buttons, local times, and buttons that a double-click cannot press.
// Served from our own origin so that the Content-Security-Policy can forbid
// inline script.
"use strict";

// Copy buttons: the clipboard when the browser allows it; otherwise the
// text is selected and a hint says to press Ctrl+C. Either way the button
// says what happened, then resets.
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var label = button.textContent;
  var timer = null;
  var reset = function () {
    button.textContent = label;
    button.classList.remove("copied");
  };
  var say = function (text, copied) {
    button.textContent = text;
    button.classList.toggle("copied", copied);
    clearTimeout(timer);
    timer = setTimeout(reset, 2000);
  };
  var select = function (source) {
    if (source.select) {
      source.focus();
      source.select();
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
  };
  var refused = function (source) {
    select(source);
    var hint = document.querySelector(".copy-hint");
    if (hint) {
      hint.hidden = false;
    }
    say("Press Ctrl+C", false);
  };
  button.addEventListener("click", function () {
    var source = document.getElementById(button.dataset.copy);
    var text = source.value !== undefined ? source.value : source.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () {
        say("Copied", true);
      }, function () {
        refused(source);
      });
      return;
    }
    select(source);
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    if (ok) {
      say("Copied", true);
    } else {
      refused(source);
    }
  });
});

// Local times, with the time zone's name; the UTC time stays as the title.
var local = function (unix) {
  return new Date(Number(unix) * 1000).toLocaleString(undefined, { timeZoneName: "short" });
};
var expires = document.getElementById("expires");
var expiresLocal = document.getElementById("expires-local");
if (expires && expiresLocal) {
  expiresLocal.textContent = "your time: " + local(expires.dataset.unix);
}
document.querySelectorAll("time.local[data-unix]").forEach(function (time) {
  time.title = time.textContent + " (UTC)";
  time.textContent = local(time.dataset.unix);
});

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

// A form is sent once: a second click while the first is on its way would
// mint a key nobody sees.
// The buttons are disabled only once the browser has read the form: a
// disabled button's name and value (Approve or Deny) would not be sent.
document.querySelectorAll("form").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (form.dataset.sent) {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "1";
    setTimeout(function () {
      form.querySelectorAll("button[type=submit]").forEach(function (button) {
        button.disabled = true;
      });
    }, 0);
  });
});

// A key page restored from the back/forward cache shows no key: a key is
// shown once.
window.addEventListener("pageshow", function (event) {
  if (!event.persisted) {
    return;
  }
  ["key", "export"].forEach(function (id) {
    var element = document.getElementById(id);
    if (element) {
      if (element.value !== undefined) {
        element.value = "";
      } else {
        element.textContent = "(shown once: see your keys page)";
      }
    }
  });
});
