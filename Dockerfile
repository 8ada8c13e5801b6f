# One image for every role: `signaling edge`, `signaling actors` or `signaling webhooks`.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md ./
COPY bus_schema ./bus_schema
COPY runtime ./runtime
COPY edge ./edge
COPY room_actors ./room_actors
COPY signaling ./signaling
COPY webhooks ./webhooks
COPY tools ./tools
RUN pip install --no-cache-dir --no-deps .
USER nobody
EXPOSE 8787 9102
CMD ["signaling", "edge"]
