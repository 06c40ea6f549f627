"""A Django project in one file for the integration suite: settings in code, no database.

`application` is the WSGI callable (`graceful serve .../django_app.py:application`).
"""

import hashlib
import os
import sys
import time

import django
from django.conf import settings

DATA_FILE = os.environ.get("INTEGRATION_DATA", os.path.abspath(__file__))
MARKERS = os.environ.get("INTEGRATION_MARKERS")

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="integration-tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        DATABASES={},
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        APPEND_SLASH=True,
        USE_TZ=True,
        DATA_UPLOAD_MAX_MEMORY_SIZE=None,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.http import (FileResponse, HttpResponse, JsonResponse,  # noqa: E402
                         StreamingHttpResponse)
from django.shortcuts import redirect  # noqa: E402
from django.urls import path, reverse  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def _with_pid(response):
    response["X-Pid"] = str(os.getpid())
    return response


def index(request):
    return _with_pid(HttpResponse("hello from django\n", content_type="text/plain"))


def slow(request):
    time.sleep(0.2)  # sleep-ok: the slow request of the load mix
    return _with_pid(HttpResponse("slow\n", content_type="text/plain"))


def info(request):
    return _with_pid(JsonResponse({
        "method": request.method,
        "path": request.path,
        "query": request.GET.dict(),
        "host": request.get_host(),
        "secure": request.is_secure(),
        "header": request.headers.get("X-Test"),
        "unicode": "caf\u00e9 \u2603",
    }))


@csrf_exempt
def form(request):
    files = {name: {"name": f.name, "size": f.size} for name, f in request.FILES.items()}
    return _with_pid(JsonResponse({"fields": request.POST.dict(), "files": files}))


@csrf_exempt
def upload(request):
    digest = hashlib.sha256()
    size = 0
    for chunk in request.FILES["file"].chunks():
        digest.update(chunk)
        size += len(chunk)
    return _with_pid(JsonResponse({"size": size, "sha256": digest.hexdigest()}))


@csrf_exempt
def echo(request):
    return _with_pid(HttpResponse(request.body, content_type="application/octet-stream"))


def stream(request):
    count = int(request.GET.get("count", "5"))
    return _with_pid(StreamingHttpResponse((f"line {i}\n" for i in range(count)),
                                           content_type="text/plain"))


def file(request):
    return _with_pid(FileResponse(open(DATA_FILE, "rb"), content_type="application/octet-stream"))


def go(request):
    return redirect(reverse("info") + "?source=redirect")


def boom(request):
    raise RuntimeError("the view failed on purpose")


urlpatterns = [
    path("", index),
    path("slow", slow),
    path("info/", info, name="info"),
    path("form", form),
    path("upload", upload),
    path("echo", echo),
    path("stream", stream),
    path("file", file),
    path("go", go),
    path("boom", boom),
]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
