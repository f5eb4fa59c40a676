// A minimal gRPC server-reflection client (grpc.reflection.v1), as grpcurl uses it.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import {
  credentials,
  loadPackageDefinition,
  type Client,
  type ClientDuplexStream,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

const require = createRequire(import.meta.url);
const protoDir = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto');

interface ReflectionResponse {
  list_services_response?: { service: Array<{ name: string }> };
  error_response?: { error_message: string };
}

type ReflectionStream = ClientDuplexStream<{ list_services?: string }, ReflectionResponse>;

/** The service names a server lists through reflection. */
export async function listServicesByReflection(address: string): Promise<string[]> {
  const definition = loadSync(join(protoDir, 'grpc', 'reflection', 'v1', 'reflection.proto'), {
    keepCase: true,
  });
  const pkg = loadPackageDefinition(definition) as unknown as {
    grpc: {
      reflection: {
        v1: {
          ServerReflection: new (
            address: string,
            creds: ReturnType<typeof credentials.createInsecure>,
          ) => Client & { serverReflectionInfo(): ReflectionStream };
        };
      };
    };
  };
  const client = new pkg.grpc.reflection.v1.ServerReflection(address, credentials.createInsecure());
  try {
    return await new Promise<string[]>((resolve, reject) => {
      const stream = client.serverReflectionInfo();
      stream.on('data', (response: ReflectionResponse) => {
        if (response.error_response) reject(new Error(response.error_response.error_message));
        else resolve((response.list_services_response?.service ?? []).map((s) => s.name));
        stream.end();
      });
      stream.on('error', reject);
      stream.write({ list_services: '' });
    });
  } finally {
    client.close();
  }
}
