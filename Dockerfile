# Multi-stage build: compile TypeScript, then a slim runtime with production dependencies only.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

FROM node:20-bookworm-slim
ENV NODE_ENV=production
# One malloc arena: ~0.9 KB less RSS per idle connection, no measured cost (BENCHMARKS.md).
ENV MALLOC_ARENA_MAX=1
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
COPY config ./config
COPY dashboard ./dashboard
COPY examples ./examples
# Run as the unprivileged user the node image provides.
USER node
EXPOSE 8098
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||8098)+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "bin/nats-ws-sidecar.js"]
