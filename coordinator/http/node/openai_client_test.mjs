// Drives `chord serve`'s HTTP front door with the official `openai` client:
// completions and chat, streaming and not, errors, and HTTP requests served
// beside a gRPC request, whose greedy answer the HTTP answers must equal.
// Usage: node openai_client_test.mjs BASE_URL GRPC_ADDRESS CHORD_BINARY
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [baseURL, grpcAddress, chordBinary] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: 'unused', maxRetries: 0 });
const prompt = 'Once upon a time';
const maxTokens = 16;

async function grpcAnswer() {
  const { stdout } = await promisify(execFile)(chordBinary, [
    'generate', '--server', grpcAddress, '--prompt', prompt, '--max-tokens', String(maxTokens),
    '--temperature', '0', '--json']);
  return JSON.parse(stdout.trim().split('\n').pop()).text;
}

async function completion() {
  const r = await client.completions.create({ model: modelId, prompt, max_tokens: maxTokens, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, maxTokens);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + maxTokens);
  return r.choices[0].text;
}

async function streamedCompletion() {
  const stream = await client.completions.create({
    model: modelId, prompt, max_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.equal(finish, 'length');
  assert.ok(usage, 'include_usage gave no usage chunk');
  assert.equal(usage.completion_tokens, maxTokens);
  return text;
}

const models = await client.models.list();
const modelId = models.data[0].id;
assert.equal(models.data.length, 1);

// gRPC and HTTP at once, on the same scheduler.
const [grpcText, plain, streamed, again] = await Promise.all([grpcAnswer(), completion(), streamedCompletion(),
  completion()]);
assert.ok(grpcText.length > 0);
assert.equal(plain, grpcText, 'HTTP completion differs from gRPC');
assert.equal(streamed, grpcText, 'streamed HTTP completion differs from gRPC');
assert.equal(again, grpcText);

const messages = [{ role: 'system', content: 'Tell a story.' }, { role: 'user', content: 'A story about a cat.' }];
const chat = await client.chat.completions.create({ model: modelId, messages, max_tokens: maxTokens, temperature: 0,
  logprobs: true, top_logprobs: 2 });
assert.equal(chat.object, 'chat.completion');
assert.equal(chat.choices[0].message.role, 'assistant');
const chatText = chat.choices[0].message.content;
assert.ok(chatText.length > 0);
assert.equal(chat.choices[0].logprobs.content.length, chat.usage.completion_tokens);
let streamedChat = '', role = null;
for await (const chunk of await client.chat.completions.create({
  model: modelId, messages, max_tokens: maxTokens, temperature: 0, stream: true })) {
  for (const choice of chunk.choices) {
    if (choice.delta.role) role = choice.delta.role;
    streamedChat += choice.delta.content ?? '';
  }
}
assert.equal(role, 'assistant');
assert.equal(streamedChat, chatText, 'streamed chat differs from the non-streamed one');

const n = await client.completions.create({ model: modelId, prompt, max_tokens: 4, n: 2, seed: 3 });
assert.equal(n.choices.length, 2);

await assert.rejects(client.completions.create({ model: 'gpt-4', prompt, max_tokens: 2 }),
  (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
await assert.rejects(client.completions.create({ model: modelId, prompt, temperature: 5 }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400);
// Still serving after the errors.
assert.equal(await completion(), grpcText);
console.log(`openai client test passed: "${grpcText}" / chat "${chatText}"`);
